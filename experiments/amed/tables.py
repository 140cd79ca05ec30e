"""Print the training table of the README from train_digits.py result files (one per driver):

    python experiments/amed/tables.py experiments/amed/results/train_digits_prior.json

Without arguments: the first pass's three files, merged into results/train_digits_all.json. The exported
state's held-out RMSE and batch (select=best) come from the file or else from the artifact's manifest."""
import json
import sys
from pathlib import Path

files = sys.argv[1:]
rows = {}
for f in files or ["experiments/amed/results/train_digits.json", "experiments/amed/results/train_digits_amed.json",
                   "experiments/amed/results/train_digits_dpm2.json"]:
    try:
        rows.update(json.load(open(f)))
    except FileNotFoundError:
        pass
if not files:
    json.dump(rows, open("experiments/amed/results/train_digits_all.json", "w"), indent=1, sort_keys=True)
print("| student / NFE | trajectories | updates | CPU s | wall s (load) | held-out loss start -> end "
      "| endpoint RMSE vs teacher start -> end (exported, its batch) |")
print("|---|---|---|---|---|---|---|")
order = lambda k: (["amed", "ipndm", "dpm_solver_2"].index(k.rsplit("_nfe", 1)[0]), int(k.rsplit("_nfe", 1)[1]))
for k in sorted(rows, key=order):
    v = rows[k]
    if "failed" in v:
        print(f"| {k} | failed |")
        continue
    man = Path("experiments/amed/artifacts") / k / "manifest.json"
    if "selected" not in v and files and man.is_file():
        met = json.loads(man.read_text())["metrics"]
        if "selected_batch" in met:
            v["selected"] = [met["val_rmse_selected"], met["selected_batch"]]
    sel = f" ({v['selected'][0]:.3f}, batch {v['selected'][1]})" if v.get("selected") else ""
    print(f"| {k.replace('_nfe', ' / ')} | {v['trajectories']} | {v['updates']} | {v['cpu_s']} | {v['wall_s']} "
          f"({v['load_before']}) | {v['val_loss'][0]:.1f} -> {v['val_loss'][1]:.1f} | {v['val_endpoint_rmse'][0]:.3f} "
          f"-> {v['val_endpoint_rmse'][1]:.3f}{sel} |")
