"""Synthetic lumbar phantoms: anatomy, ultrasound and MR simulation, DICOM writing."""
