"""FID of the UniPC-20 teacher on the digits UNet, seeds 0..4999 (the UniPC row of README section 2)."""
import sys, json, torch
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
torch.set_num_threads(2)
from common import DigitsFID, solve_grid
from diffode.evaluation.models import initial_noise
from diffode.methods.denoiser import load_denoiser
D, info = load_denoiser("/tmp/ld3_digits_unet.ckpt")
x_T = initial_noise((1, 8, 8), range(5000), 80.0)
fid = DigitsFID()
r = fid(solve_grid(D, x_T, "unipc_bh1", 20, "logsnr", info["schedule"], 0.002, 80.0))
print(json.dumps({"teacher": "unipc_bh1 order 3, 20 NFE, logsnr", "n": 5000, "fid": r}), flush=True)
