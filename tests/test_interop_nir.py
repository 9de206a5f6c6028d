"""NIR export / import, checked against snnTorch (the `[interop]` extra).

snnTorch is the independent reference: our graphs are loaded with its `import_from_nir` and
run step by step; networks it builds are exported with its `export_to_nir` and run in ours.
Spikes are compared layer by layer and per timestep with the upstream layer's spikes forced
to ours (a forward hook), so every layer is checked on identical inputs: a spike may differ
only where the membrane lies within `TOL` of the threshold (float32 summation order), and
such flips are counted and printed. snnTorch's importer builds `torch.nn.Flatten(start_dim,
...)` from NIR's batch-free start_dim, so its modules are run on one unbatched sample at a time.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax.distill import flatten_taps
from mdsnn_jax.interop.nir import lif_to_nir_params
from mdsnn_jax.neuron import lif_scan
from mdsnn_jax.nn import create_model, default_model_config, init_variables
from mdsnn_jax.nn.models import MSResNet, SEWResNet

REPO = pathlib.Path(__file__).resolve().parents[1]
# The launcher imports this checkout's package (not another installed copy).
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
TOL = 1e-4  # |membrane − θ| below which a float32 spike flip is allowed (θ = 1, h = O(1))


# ----------------------------------------------------------------------------------------
# Helpers.


def _digits(n: int) -> np.ndarray:
  from sklearn.datasets import load_digits
  return (load_digits().images[:n, :, :, None] / 16.0).astype(np.float32)


def _taps(model, variables, x):
  y, cols = model.apply(variables, x, train=False, mutable=["spikes", "membranes"])
  spikes = {k: np.asarray(v) for k, v in flatten_taps(cols["spikes"]).items()}
  membranes = {k: np.asarray(v) for k, v in flatten_taps(cols["membranes"]).items()}
  return np.asarray(y), spikes, membranes


def _cf(a: np.ndarray) -> np.ndarray:
  """[T, B, H, W, C] -> [T, B, C, H, W] (NIR / torch layout); flat taps unchanged."""
  return np.moveaxis(a, -1, 2) if a.ndim == 5 else a


def _torch_name(nir_name: str) -> str:
  return nir_name.replace(".", "_")  # nirtorch's module names


def run_snntorch(net, samples: np.ndarray, timesteps: int, forced=None):
  """Runs a torch SNN on static inputs (repeated over T), with or without a batch axis.

  samples: [B, *in] channels-first; the modules run on samples[b] (unbatched) when
  `net` came from `import_from_nir`, else on the whole batch (batched=True below).
  forced: {leaky module name: spikes [T, B, ...]} replace each Leaky's output.
  Returns (outputs [T, B, ...], spikes {name: [T, B, ...]}, pre-reset membranes β·u + x).
  """
  import snntorch as snn
  import torch
  leaky = {n: m for n, m in net.named_modules() if isinstance(m, snn.Leaky)}
  rec_s = {n: [] for n in leaky}
  rec_h = {n: [] for n in leaky}
  where = {}
  handles = []

  def pre(name):
    def hook(m, args):
      x = args[0]
      prev = m.mem if m.mem.shape == x.shape else torch.zeros_like(x)
      rec_h[name].append((m.beta.clamp(0, 1) * prev + x).detach().numpy().copy())
    return hook

  def post(name):
    def hook(m, args, out):
      rec_s[name].append(out.detach().numpy().copy())
      if forced is not None:
        t, b = where["t"], where["b"]
        return torch.as_tensor(forced[name][t] if b is None else forced[name][t, b])
    return hook

  for n, m in leaky.items():
    handles += [m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n))]
  batched = not isinstance(net, torch.fx.GraphModule)
  runs = [None] if batched else range(samples.shape[0])
  outs = []
  with torch.no_grad():
    for b in runs:
      for m in leaky.values():
        m.reset_mem()
      x = torch.as_tensor(samples if b is None else samples[b])
      for t in range(timesteps):
        where.update(t=t, b=b)
        y = net(x)
        y = y[0] if isinstance(y, tuple) else y
        outs.append(y.numpy().copy())
  for h in handles:
    h.remove()

  def stack(seq):
    a = np.stack(seq)
    if batched:
      return a  # [T, B, ...]
    return a.reshape((samples.shape[0], timesteps) + a.shape[1:]).swapaxes(0, 1)

  return stack(outs), {n: stack(v) for n, v in rec_s.items()}, {n: stack(v) for n, v in rec_h.items()}


def compare_spikes(ours_s, ours_h, theirs_s, theirs_h, thresholds, label: str) -> int:
  """Asserts equal spikes (flips only within TOL of θ) and membranes; returns the flips."""
  total_flips = compared = 0
  for name, s in ours_s.items():
    other = theirs_s[name]
    assert other.shape == s.shape, (name, other.shape, s.shape)
    np.testing.assert_allclose(theirs_h[name], ours_h[name], atol=TOL, rtol=0,
                               err_msg=f"{label}: membranes of {name}")
    flips = other != s
    near = np.abs(ours_h[name] - thresholds[name]) <= TOL
    assert not np.any(flips & ~near), (
        f"{label}: {int(np.sum(flips & ~near))} spike flips in {name} away from the threshold")
    total_flips += int(flips.sum())
    compared += s.size
    assert 0 < s.mean() < 1, f"{label}: layer {name} is silent or saturated (rate {s.mean()})"
  print(f"\n{label}: {compared} spikes in {len(ours_s)} layers x T compared, "
        f"{total_flips} flipped (all within {TOL} of the threshold)")
  return total_flips


def _check_against_snntorch(model, variables, x_ours, label: str):
  """Ours vs snnTorch's import of to_nir(...), forced layer by layer; returns flips."""
  from snntorch.import_nir import import_from_nir

  from mdsnn_jax.interop.nir import to_nir
  graph = to_nir(model, variables, x_ours)
  t = graph.metadata["timesteps"]
  y, s, h = _taps(model, variables, x_ours)
  names = {k: _torch_name(k.replace("/", ".")) for k in s}
  ours_s = {names[k]: _cf(v) for k, v in s.items()}
  ours_h = {names[k]: _cf(v) for k, v in h.items()}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    net = import_from_nir(graph)
  out, theirs_s, theirs_h = run_snntorch(net, np.moveaxis(x_ours, -1, 1), t, forced=ours_s)
  theta = {n: float(model.neuron.threshold) for n in ours_s}
  flips = compare_spikes(ours_s, ours_h, theirs_s, theirs_h, theta, label)
  np.testing.assert_allclose(out, y, atol=TOL, rtol=1e-4, err_msg=f"{label}: readout")
  return flips


# ----------------------------------------------------------------------------------------
# The neuron mapping (no extra needed).


@pytest.mark.parametrize("decay", [0.0, 0.25, 0.5, 0.9])
def test_nir_lif_euler_step_is_our_neuron(decay):
  """v_t = (1 − dt/τ)·v + (dt/τ)·v_leak + (R·dt/τ)·I with the exported (τ, R, v_leak, θ,
  v_reset), hard reset to v_reset when v > θ, reproduces lif_scan's spikes and membranes."""
  dt = 1e-4
  rng = np.random.default_rng(0)
  x = rng.normal(0.6, 0.8, size=(12, 5, 7)).astype(np.float32)
  p = lif_to_nir_params(decay, 1.0, (7,), dt)
  v = np.zeros((5, 7))
  spikes, membranes = [], []
  for xt in x.astype(np.float64):
    v = (1 - dt / p["tau"]) * v + (dt / p["tau"]) * p["v_leak"] + (p["r"] * dt / p["tau"]) * xt
    membranes.append(v)
    z = v > p["v_threshold"]
    spikes.append(z)
    v = np.where(z, p["v_reset"], v)
  s, h, _ = lif_scan(jnp.asarray(x), decay=decay, threshold=1.0)
  np.testing.assert_allclose(np.asarray(h), np.stack(membranes), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(s), np.stack(spikes))
  np.testing.assert_allclose(p["tau"], dt / (1 - decay))


def test_nir_if_for_no_leak_and_bad_decay():
  p = lif_to_nir_params(1.0, 0.5, (3,), 1e-3)
  assert set(p) == {"r", "v_threshold", "v_reset"}  # NIR IF: v += dt·R·I with R = 1/dt
  np.testing.assert_allclose(p["r"] * 1e-3, 1.0)
  with pytest.raises(ValueError, match="decay must be"):
    lif_to_nir_params(1.5, 1.0, (3,))


# ----------------------------------------------------------------------------------------
# Export / import with `nir` only.


def _digits_cnn(**quant):
  cfg = default_model_config()
  cfg.name = "digits_cnn"
  cfg.timesteps = 3
  cfg.quant.update(quant)
  model = create_model(cfg, 10)
  x = _digits(6) * 2.5
  return model, init_variables(model, jax.random.PRNGKey(0), x), x


def test_export_refuses_what_nir_cannot_express():
  nir = pytest.importorskip("nir")
  from mdsnn_jax.interop.nir import to_nir
  _, variables, x = _digits_cnn()  # the same variables fit every neuron variant below
  for neuron, match in [({"reset": "soft"}, r"'lif0'.*reset='soft'"),
                        ({"reset": "none"}, r"'lif0'.*reset='none'"),
                        ({"prune_prior": 0.1}, r"'lif0'.*membrane-prior channel gating"),
                        ({"gate_rho": 0.85}, r"'lif0'.*learned channel gate")]:
    cfg = default_model_config()
    cfg.name, cfg.timesteps = "digits_cnn", 3
    cfg.neuron.update(neuron)
    with pytest.raises(ValueError, match=match):
      to_nir(create_model(cfg, 10), variables, x)
  model, variables, x = _digits_cnn(membrane={"kind": "ternary"})
  with pytest.raises(ValueError, match=r"'lif0'.*membrane quantizer 'ternary'.*fp_twin"):
    to_nir(model, variables, x)
  with pytest.warns(UserWarning, match="float-membrane twin"):
    graph = to_nir(model, variables, x, membrane_quant="fp_twin")
  assert graph.nodes["lif0"].metadata["membrane_quant_dropped"] == "ternary"
  with pytest.raises(ValueError, match="unknown membrane_quant 'drop'"):
    to_nir(model, variables, x, membrane_quant="drop")
  assert isinstance(graph, nir.NIRGraph)


def test_import_refuses_unsupported_nodes_and_cycles():
  nir = pytest.importorskip("nir")
  from mdsnn_jax.interop.nir import from_nir
  w = np.eye(3, dtype=np.float32)
  scale = nir.NIRGraph.from_list(nir.Affine(weight=w, bias=np.zeros(3, np.float32)),
                                 nir.Scale(scale=np.ones(3, np.float32)))
  with pytest.raises(ValueError, match=r"'scale' has type Scale.*supported node types.*Affine"):
    from_nir(scale)
  lif = nir.LIF(**lif_to_nir_params(0.5, 1.0, (3,)))
  cyc = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "lif": lif,
                            "rec": nir.Linear(weight=w), "output": nir.Output(np.array([3]))},
                     edges=[("input", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")],
                     type_check=False)
  with pytest.raises(ValueError, match="cycle through.*recurrent"):
    from_nir(cyc)
  leak = nir.LIF(tau=np.full(3, 2e-4), r=np.full(3, 2.0), v_leak=np.full(3, 0.1),
                 v_threshold=np.ones(3))
  with pytest.raises(ValueError, match="NIR LIF node 'lif'.*v_leak must be 0"):
    from_nir(nir.NIRGraph.from_list(nir.Linear(weight=w), leak))


@pytest.mark.integration
def test_quantized_digits_cnn_round_trips_through_a_nir_file(tmp_path):
  """BN-folded 4-bit student: ours == from_nir(to_nir(...)) spike for spike, and the .nir file
  reads back to a graph with bitwise identical outputs; metadata carries T, bits, scales."""
  nir = pytest.importorskip("nir")
  from mdsnn_jax.interop.nir import from_nir, to_nir
  model, variables, x = _digits_cnn(weight={"kind": "lsq", "bits": 4},
                                    first_layer={"kind": "uniform", "bits": 8},
                                    last_layer={"kind": "uniform", "bits": 8}, bn_fold=True)
  graph = to_nir(model, variables, x)
  path = tmp_path / "digits.nir"
  nir.write(path, graph)
  back = nir.read(path)
  assert int(back.metadata["timesteps"]) == 3
  assert int(back.nodes["conv1"].metadata["weight_bits"]) == 4
  assert np.all(np.asarray(back.nodes["conv1"].metadata["weight_scale"]) > 0)  # LSQ step
  assert int(back.nodes["conv0"].metadata["weight_bits"]) == 8
  m1, v1 = from_nir(graph)
  m2, v2 = from_nir(back)
  y1, s1, h1 = _taps(m1, v1, x)
  y2, s2, h2 = _taps(m2, v2, x)
  np.testing.assert_array_equal(y1, y2)
  for k in s1:
    np.testing.assert_array_equal(s1[k], s2[k])
  y, s, h = _taps(model, variables, x)
  flips = compare_spikes({k: v for k, v in s.items()}, h, s1, h1,
                         {k: 1.0 for k in s}, "quantized digits CNN vs from_nir")
  assert flips == 0
  np.testing.assert_allclose(y1, y, atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["sew", "ms"])
def test_residual_networks_round_trip(arch):
  """Residual additions become several edges into one node (NIR sums a node's inputs)."""
  pytest.importorskip("nir")
  from mdsnn_jax.interop.nir import from_nir, to_nir
  stages = ((4, 1, 1), (8, 1, 2))  # an identity and a downsampling shortcut
  model = (SEWResNet(stem_channels=4, stages=stages, timesteps=2) if arch == "sew" else
           MSResNet(stem_channels=4, stages=stages, hidden=6, timesteps=2))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3)) * 3
  variables = init_variables(model, jax.random.PRNGKey(0), x)
  graph = to_nir(model, variables, x)
  fan_in = {}
  for a, b in graph.edges:
    fan_in[b] = fan_in.get(b, 0) + 1
  assert max(fan_in.values()) >= 2  # an identity shortcut
  m, v = from_nir(graph)
  y, s, h = _taps(model, variables, x)
  y2, s2, h2 = _taps(m, v, x)
  renamed = {k.replace("/", "."): val for k, val in s.items()}
  assert set(renamed) == set(s2)
  for k in renamed:
    np.testing.assert_array_equal(renamed[k], s2[k])
  np.testing.assert_allclose(y2, y, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Checked by snnTorch.


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
  """A digits CNN trained for 30 steps through the real training library."""
  pytest.importorskip("snntorch")
  from mdsnn_jax.train.config import base_config
  from mdsnn_jax.train.loop import train_and_evaluate
  c = base_config()
  c.stages = "fp"
  c.model.name = "digits_cnn"
  c.model.timesteps = 4
  c.train.update(steps=30, global_batch=32, eval_batch=128, log_every=10, checkpoint_every=30,
                 eval_ptq=False)
  c.report = False
  workdir = tmp_path_factory.mktemp("digits")
  train_and_evaluate(c, str(workdir))
  return workdir


@pytest.mark.integration
def test_trained_digits_cnn_matches_snntorch(trained_digits):
  from mdsnn_jax.interop.nir import load_stage
  model, variables, _ = load_stage(trained_digits, "fp")
  flips = _check_against_snntorch(model, variables, _digits(16), "trained digits CNN vs snnTorch")
  assert flips <= 2


@pytest.mark.integration
def test_export_launcher_writes_a_file_snntorch_loads(trained_digits, tmp_path):
  nir = pytest.importorskip("nir")
  from snntorch.import_nir import import_from_nir
  out = tmp_path / "fp.nir"
  proc = subprocess.run([sys.executable, "launch/export.py", f"--workdir={trained_digits}",
                         "--stage=fp", "--format=nir", f"--out={out}"], cwd=REPO,
                        env=ENV, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "wrote" in proc.stdout and out.is_file()
  graph = nir.read(out)
  assert [k for k in graph.nodes if k.startswith("lif")] == ["lif0", "lif1"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    net = import_from_nir(graph)
  y = net(__import__("torch").zeros(1, 8, 8))[0]
  assert tuple(y.shape) == (10,)
  bad = subprocess.run([sys.executable, "launch/export.py", f"--workdir={trained_digits}",
                        "--stage=md", f"--out={out}"], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode != 0 and "stage 'md' has no exported variables" in bad.stderr


@pytest.mark.integration
def test_fp_vgg9_on_cifar_matches_snntorch(shared_data):
  pytest.importorskip("snntorch")
  from mdsnn_jax.data import registry
  from mdsnn_jax.data.sources import read_cifar_batch
  images, _ = read_cifar_batch(shared_data / "cifar-10-batches-py" / "test_batch")
  mean, std = registry.MEAN_STD["cifar10"]
  x = ((images[:4] / 255.0 - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
  cfg = default_model_config()
  cfg.name, cfg.width, cfg.timesteps = "vgg9", 0.25, 4
  model = create_model(cfg, 10)
  variables = init_variables(model, jax.random.PRNGKey(0), x)
  # Random weights leave deep layers silent: BN scale 1.5, offset 0.2 and running statistics
  # from training forwards on the images (momentum 0.9, 10 steps), so every layer fires and
  # the folding W·γ/√(σ²+ε), β − μ·γ/√(σ²+ε) is exercised with non-trivial statistics.
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: (jnp.full_like(a, 1.5) if "bn" in str(p) and "scale" in str(p) else
                    jnp.full_like(a, 0.2) if "bn" in str(p) and "bias" in str(p) else a),
      variables["params"])
  variables = {**variables, "params": params}
  stats_step = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[1])
  for _ in range(10):
    variables = {**variables, **stats_step(variables)}
  _check_against_snntorch(model, variables, x, "FP VGG-9 (width 1/4) on CIFAR-10 vs snnTorch")


def test_snntorch_exported_network_runs_in_from_nir():
  torch = pytest.importorskip("torch")
  snn = pytest.importorskip("snntorch")
  from snntorch.export_nir import export_to_nir

  from mdsnn_jax.interop.nir import from_nir
  torch.manual_seed(0)
  leaky = lambda shape: snn.Leaky(beta=torch.full(shape, 0.75), threshold=torch.full(shape, 0.5),
                                  init_hidden=True, reset_mechanism="zero", reset_delay=False)
  net = torch.nn.Sequential(
      torch.nn.Conv2d(1, 8, 3, padding=1), leaky((8, 8, 8)), torch.nn.AvgPool2d(2),
      torch.nn.Flatten(), torch.nn.Linear(8 * 16, 10), leaky((10,)))
  with torch.no_grad():
    net[0].weight.mul_(3.0)
    net[0].bias.add_(0.2)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    graph = export_to_nir(net, torch.zeros(1, 1, 8, 8), ignore_dims=[0])
  model, variables = from_nir(graph, timesteps=5)
  x = _digits(8) * 2.0
  y, s, h = _taps(model, variables, x)
  ours_s = {k: _cf(v) for k, v in s.items()}
  ours_h = {k: _cf(v) for k, v in h.items()}
  out, theirs_s, theirs_h = run_snntorch(net, np.moveaxis(x, -1, 1), 5, forced=ours_s)
  flips = compare_spikes(ours_s, ours_h, theirs_s, theirs_h, {"1": 0.5, "5": 0.5},
                         "snnTorch-exported CNN vs from_nir")
  assert flips <= 2
  if flips == 0:  # then the free-running torch network must give our spikes exactly
    free, free_s, _ = run_snntorch(net, np.moveaxis(x, -1, 1), 5)
    for k in ours_s:
      np.testing.assert_array_equal(free_s[k], ours_s[k])
    np.testing.assert_array_equal(free, ours_s["5"])


# ----------------------------------------------------------------------------------------
# The README section runs as written.


def _guide_block(marker: str) -> str:
  """The python block of docs/interop.md that contains `marker`."""
  text = (REPO / "docs" / "interop.md").read_text()
  blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if marker in b]
  assert len(blocks) == 1, f"expected one python block with {marker!r} in docs/interop.md"
  return blocks[0]


def test_documented_export_example_runs(tmp_path, monkeypatch, capsys):
  pytest.importorskip("snntorch")
  monkeypatch.chdir(tmp_path)
  exec(compile(_guide_block("snnTorch outputs equal ours"), "docs/interop.md export", "exec"),
       {})
  out = capsys.readouterr().out
  assert "snnTorch outputs equal ours: True" in out, out
