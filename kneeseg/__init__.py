"""kneeseg: self-configuring segmentation of femur, tibia and patella in low-field knee MRI.

Stages (one subpackage each, talking through files on disk), in import order:
io -> dataset -> fingerprint -> planning -> preprocessing -> training -> evaluation -> postprocessing
-> inference -> export. A stage imports only earlier stages, ``kneeseg.io`` and the leaf modules
(``errors``, ``arrays``, ``hardware``, ``paths``); ``kneeseg.api`` composes the stages and
``kneeseg.cli`` only parses arguments and calls the API. See docs/architecture.md.
"""

__version__ = "0.2.0"
