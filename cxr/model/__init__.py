"""The model: the network (:mod:`.network`), training (:mod:`.training`), scoring on LiteRT or
Keras (:mod:`.inference`, :mod:`.runtime`), the not-a-chest-X-ray detector (:mod:`.ood`) and
export (:mod:`.export`).

Imports the layers below (foundation, imaging, records, data, shift), nothing above.
"""
