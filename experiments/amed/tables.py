"""Merge the train_digits*.json of concurrent drivers into results/train_digits_all.json and print the
training table of the README:  python experiments/amed/tables.py"""
import json
rows = {}
for f in ["experiments/amed/results/train_digits.json", "experiments/amed/results/train_digits_amed.json", "experiments/amed/results/train_digits_dpm2.json"]:
    try: rows.update(json.load(open(f)))
    except FileNotFoundError: pass
json.dump(rows, open("experiments/amed/results/train_digits_all.json", "w"), indent=1, sort_keys=True)
print("| student / NFE | updates | CPU s | wall s (load) | held-out loss start -> end | endpoint RMSE vs teacher start -> end |")
print("|---|---|---|---|---|---|")
order = lambda k: (["amed", "ipndm", "dpm_solver_2"].index(k.rsplit("_nfe", 1)[0]), int(k.rsplit("_nfe", 1)[1]))
for k in sorted(rows, key=order):
    v = rows[k]
    if "failed" in v: print(f"| {k} | failed |"); continue
    print(f"| {k.replace('_nfe', ' / ')} | {v['updates']} | {v['cpu_s']} | {v['wall_s']} ({v['load_before']}) | {v['val_loss'][0]:.1f} -> {v['val_loss'][1]:.1f} | {v['val_endpoint_rmse'][0]:.3f} -> {v['val_endpoint_rmse'][1]:.3f} |")
