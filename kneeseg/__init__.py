"""kneeseg: self-configuring segmentation of femur, tibia and patella in low-field knee MRI.

Stages (one subpackage each, talking through files on disk):
io -> dataset -> fingerprint -> planning -> preprocessing -> training -> inference
-> postprocessing -> evaluation. A stage imports only earlier stages and ``kneeseg.io``;
``kneeseg.cli`` only parses arguments and calls the stages' APIs.
"""

__version__ = "0.1.0"
