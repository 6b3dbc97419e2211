"""GPU check of openmm_cmt.reference (engineer G): exactness, speed, and a 300x16 reference."""
import json, os, sys, time
import numpy as np
import torch
import openmm
from openmm import app, unit
sys.path.insert(0, os.getcwd())
from openmm_cmt.systems.molecular_system import MolecularSystem
from openmm_cmt.reference import ReplicaExchange, geometric_temperatures
from openmm_cmt.replicas import replicate_system, per_copy_langevin_integrator, set_copy_temperatures, copy_velocities
from openmm_cmt.replicas.replicated_context import ReplicatedContext

OUT = os.environ["OUT"]
d = "runs/g_reference_gpu/"
system = openmm.XmlSerializer.deserialize(open(d + "aldp_system.xml").read())
top = app.PDBFile(d + "aldp.pdb").topology
pos = np.load(d + "aldp_positions.npy")
m = MolecularSystem("alanine-dipeptide", top, system, pos, 300.0)
summary = {"torch": torch.__version__, "openmm": openmm.__version__,
           "platforms": [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())],
           "gpu": torch.cuda.get_device_name(0)}
from openmm_cmt.metrics import phi_psi
summary["phi_psi_start"] = phi_psi(pos[None], top).tolist()
print(summary, flush=True)

# 1. exactness of the replicated System on CUDA (mixed) against single-molecule CPU energies
rng = np.random.default_rng(0)
C = 1000
rs, off = replicate_system(system, C, positions=pos)
xs = pos[None] + 0.01 * rng.standard_normal((C, *pos.shape))
ctx = openmm.Context(rs, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"})
ctx.setPositions((xs - xs.mean(1, keepdims=True) + off[:, None]).reshape(-1, 3))
e_rep = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
single = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
e_sum = 0.0
for x in xs:
    single.setPositions(x)
    e_sum += single.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
summary["replicated_1000_rel_error_cuda_mixed"] = abs(e_rep - e_sum) / abs(e_sum)
del ctx
print("exactness", summary["replicated_1000_rel_error_cuda_mixed"], flush=True)

# 2. MD speed of 4800 copies with the per-copy integrator
integ = per_copy_langevin_integrator(0.001, 1.0)
rc = ReplicatedContext(system, pos, 4800, integ, platform="CUDA")
temps = np.repeat(geometric_temperatures(300, 1200, 16)[None], 300, 0).reshape(-1)
set_copy_temperatures(integ, temps, 22)
rc.set_velocities(copy_velocities(rc.masses, temps, rng))
rc.step(200)
rc.get_positions()
t = time.perf_counter(); rc.step(2000); rc.get_positions(); dt = time.perf_counter() - t
summary["md_4800_copies_steps_per_s"] = 2000 / dt
t = time.perf_counter(); rc.recentre(); summary["recentre_4800_s"] = time.perf_counter() - t
del rc, integ
print("md", summary["md_4800_copies_steps_per_s"], flush=True)

# 3. replica exchange, 300 ladders x 16 temperatures: a short timed run, then one sized to fit
temps16 = geometric_temperatures(300.0, 1200.0, 16)
kw = dict(n_ladders=300, swap_interval=2.0, save_interval=2.5, recentre_interval=1.0, platform="CUDA", seed=11)
t = time.perf_counter()
with ReplicaExchange(m, temps16, **kw) as rex:
    summary["energy_engine"] = rex.settings["energy_engine"]
    setup = time.perf_counter() - t
    short = rex.run(10.0, equilibration_ps=0.0)
summary["re_setup_s"] = setup
summary["re_10ps_wall_s"] = short.diagnostics["wall_s"]
rate = 10.0 / short.diagnostics["wall_s"]  # ps per second
budget = float(os.environ.get("RE_BUDGET_S", "200"))
prod = max(20.0, min(400.0, 2.5 * int(0.9 * budget * rate / 2.5) - 20.0))
summary["re_production_ps"] = prod
print("short run", summary["re_10ps_wall_s"], "production ps", prod, flush=True)
with ReplicaExchange(m, temps16, **kw) as rex:
    ref = rex.run(prod, equilibration_ps=20.0, progress=lambda i: print(f"  {i['time_ps']:.0f}/{i['total_ps']:.0f} ps wall {i['wall_s']:.0f} s", flush=True) if int(i["time_ps"]) % 50 == 0 else None)
ref.save(os.path.join(OUT, "aldp_reference_300x16.npz"))
summary["diagnostics"] = ref.diagnostics
summary["settings"] = ref.settings
json.dump(summary, open(os.path.join(OUT, "summary.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
