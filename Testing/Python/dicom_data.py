"""Small CT-like DICOM series written with pydicom for the DICOM tests (a helper module, not a test file).

:func:`write_ct_series` writes one CT Image Storage file per slice of a SimpleITK image, with
proper UIDs, Image Position/Orientation (Patient) from the image's LPS geometry, and stored
values = (HU + 1024) / 1 with Rescale Intercept -1024 and Slope 1, as scanners write them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

PATIENT = {"PatientName": "Demo^Abdomen", "PatientID": "LS-0001", "PatientBirthDate": "19700101",
           "PatientSex": "O"}
OBLIQUE_DIRECTION = (0.9063078, 0.0, 0.4226183,   # 25 degrees about y: columns of the 3x3 are the axes
                     0.0, 1.0, 0.0,
                     -0.4226183, 0.0, 0.9063078)


def demo_ct(folder: Path) -> sitk.Image:
    """The first synthetic abdominal CT of the demo data (int16 HU, about 96 x 96 x 13, 0.8 x 0.8 x 3.5 mm)."""
    from labelsharing.demo import make_demo_datasets

    task = make_demo_datasets(folder, cases=1)[0]
    return sitk.ReadImage(str(sorted((task / "imagesTr").iterdir())[0]))


def write_ct_series(image: sitk.Image, folder: Path, skip: Iterable[int] = (), description: str = "Demo CT",
                    study_uid: str | None = None, series_uid: str | None = None, tilt: float = 0.0) -> list[Path]:
    """Write ``image`` (3D, LPS) as a CT series, one file per slice, into ``folder``.

    Args:
        skip: slice indices not written (a series with missing slices).
        tilt: mm each slice is shifted along x per slice (a gantry tilt: slices not stacked along the normal).

    Returns:
        the written files, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing, origin = np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin())
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()
    files = []
    for k in range(array.shape[0]):
        if k in set(skip):
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "LabelSharingSeg tests", 1, k + 1
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        position = origin + direction @ np.array([0.0, 0.0, k * spacing[2]]) + np.array([k * tilt, 0.0, 0.0])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.7f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = np.clip(array[k].astype(np.int32) + 1024, 0, 4095).astype(np.uint16).tobytes()
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def oblique(image: sitk.Image) -> sitk.Image:
    """The same voxels with an oblique direction (25 degrees about the y axis)."""
    turned = sitk.Image(image)
    turned.SetDirection(OBLIQUE_DIRECTION)
    return turned
