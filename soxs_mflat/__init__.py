"""soxs_mflat: master flat-field recipe for the SOXS and X-shooter echelle spectrographs."""

__version__ = "0.1.0"
