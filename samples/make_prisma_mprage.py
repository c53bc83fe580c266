"""Rebuild ``prisma_mprage.nii.gz`` from the shared data: the 6 central slices (instances 94–99 of
192) of the Siemens Prisma fit MPRAGE in ``shared/data/train/dcm_qa_asl/T1_mprage_ns_sag``
(neurolabusc/dcm_qa_asl, BSD-2-Clause; see README.md here), stored values as they are (uint16, no
rescaling), the DICOM geometry as the NIfTI affine (1 mm voxels).

    python samples/make_prisma_mprage.py [path/to/shared/data]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from bmz import io  # noqa: E402

FIRST, COUNT = 17, 6  # of the folder's 40 slices, sorted along the slice normal


def main(argv: list[str]) -> int:
    shared = Path(argv[0]) if argv else HERE.parents[1] / "shared" / "data"
    vol = io.read(shared / "train" / "dcm_qa_asl" / "T1_mprage_ns_sag")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.nii"
        io.write(vol, full)  # the DICOM geometry as a RAS+ affine; no scaling (scl_slope unset)
        img = nib.load(full)
        data = np.asarray(img.dataobj.get_unscaled())[:, :, FIRST:FIRST + COUNT].copy()
        hdr = img.header.copy()
        hdr["descrip"] = b"dcm_qa_asl T1_mprage_ns_sag, instances 94-99"
        out = nib.Nifti1Image(data, img.slicer[:, :, FIRST:FIRST + COUNT].affine, hdr)
        nib.openers.Opener.default_compresslevel = 9
        nib.save(out, HERE / "prisma_mprage.nii.gz")
    back = nib.load(HERE / "prisma_mprage.nii.gz")
    print(f"{HERE / 'prisma_mprage.nii.gz'}: {back.shape} {back.get_data_dtype()}, "
          f"voxels {back.header.get_zooms()} mm, stored {data.min()}..{data.max()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
