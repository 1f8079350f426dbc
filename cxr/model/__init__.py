"""The model: the network (:mod:`.network`), training (:mod:`.training` over the backbone cache of
:mod:`.cache`, with the ``weights: none``
schedule in :mod:`.from_scratch` and what both share in :mod:`.fitting`), scoring on LiteRT or
Keras (:mod:`.inference`, :mod:`.runtime`), the not-a-chest-X-ray detector (:mod:`.ood`, fitted
by :mod:`.ood_fit`) and export (:mod:`.export`).

Imports the layers below it (the foundation, imaging, data, shift), nothing above.
"""
