"""FID of the UniPC-20 teacher (order 3, logsnr grid) on a digits UNet, seeds 0..n-1.

Recorded once on the old 32-channel checkpoint (/tmp/ld3_digits_unet.ckpt, superseded: README section 2);
the teacher's FID on the shipped checkpoint is `digits_fid_shipped.py --scale`.

    python experiments/ld3/teacher_fid.py --ckpt diffode/assets/digits_unet.ckpt --n 5000
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DigitsFID, solve_grid, source_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="diffode/assets/digits_unet.ckpt")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffode.models import initial_noise

    model = source_model(args.ckpt)
    x_T = initial_noise(model.shape, range(args.n), model.sigma_max)
    r = DigitsFID()(solve_grid(model.denoiser, x_T, "unipc_bh1", 20, "logsnr", model.schedule, model.sigma_min,
                               model.sigma_max, order=3))
    print(json.dumps({"teacher": "unipc_bh1 order 3, 20 NFE, logsnr", "ckpt": args.ckpt, "n": args.n, "fid": r}), flush=True)


if __name__ == "__main__":
    main()
