"""GPU check of lungseg's Keras code under the JAX backend (the device has no TensorFlow)."""
import json, os, sys, time
os.environ["KERAS_BACKEND"] = "jax"
T0 = time.time()
import numpy as np, jax, keras
sys.path.insert(0, os.getcwd())
from losses import get_loss, LOSS_NAMES, component_metrics
from models import build_unet, count_params
from segmentation.sliding_window import sliding_window_inference, window_positions

OUT = os.environ.get("OUT", ".")
SMALL = os.environ.get("SMALL") == "1"
PATCH = (32, 32, 32) if SMALL else (128, 128, 96)
FILTERS = (4, 8, 16) if SMALL else (32, 64, 128, 256, 320)
VOL = (70, 64, 50) if SMALL else (448, 448, 300)
res = {"devices": [str(d) for d in jax.devices()], "keras": keras.__version__, "jax": jax.__version__,
       "backend": keras.backend.backend()}
def log(k, v):
    res[k] = v; print(k, json.dumps(v, default=str), flush=True)
    json.dump(res, open(os.path.join(OUT, "gpu_check.json"), "w"), indent=1, default=str)

# 1. Loss values against the TensorFlow-backend reference computed on the CPU.
ref = np.load("docs/gpu/loss_ref.npz")
diffs = {}
for name in LOSS_NAMES:
    v = float(keras.ops.convert_to_numpy(get_loss(name)(ref["y"], ref["z"])))
    diffs[name] = {"jax_gpu": v, "tf_cpu": float(ref[name]), "abs_diff": abs(v - float(ref[name]))}
log("loss_vs_tf_reference", diffs)

# 2. Finite values and gradients at extreme logits, float16/float32, empty/full/random targets.
bad = []
rng = np.random.default_rng(1)
for name in LOSS_NAMES:
    loss = get_loss(name)
    for dtype in ("float32", "float16"):
        for tname, y in (("zeros", np.zeros((2, 8, 8, 8, 1))), ("ones", np.ones((2, 8, 8, 8, 1))),
                         ("random", (rng.random((2, 8, 8, 8, 1)) < 0.2) * 1.0)):
            for scale in (1e-4, 1.0, 1e2, 1e4):
                z = (rng.normal(size=(2, 8, 8, 8, 1)) * scale).astype(dtype)
                f = lambda zz: loss(y.astype("float32"), zz)
                val, grad = jax.value_and_grad(lambda zz: f(zz).astype("float32"))(jax.numpy.asarray(z))
                if not (np.isfinite(float(val)) and np.isfinite(np.asarray(grad, dtype="float32")).all()):
                    bad.append([name, dtype, tname, scale])
    perfect = float(loss(np.zeros((2, 8, 8, 8, 1)), np.full((2, 8, 8, 8, 1), -50.0)))
    if perfect > 1e-3:
        bad.append([name, "perfect-empty", perfect])
log("non_finite_or_bad_cases", bad)

# 3. default.yaml-sized 3D U-Net training step on the GPU, mixed_float16 then float32.
def train_bench(policy, steps=12, patch=PATCH, batch=2):
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = build_unet(3, filters=FILTERS, norm="instance", input_shape=(*patch, 1))
    loss = get_loss("hybrid")
    model.compile(optimizer=keras.optimizers.AdamW(3e-4), loss=loss, metrics=component_metrics(loss))
    n = batch * (steps + 2)
    x = rng.normal(size=(n, *patch, 1)).astype("float32")
    grid = np.stack(np.meshgrid(*[np.arange(p) for p in patch], indexing="ij"), -1)
    y = (((grid - np.array(patch) / 2) ** 2).sum(-1) < (min(patch) / 8) ** 2).astype("float32")[None, ..., None].repeat(n, 0)
    x += 2 * y
    times = []
    class T(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None): self.t = time.perf_counter()
        def on_train_batch_end(self, b, logs=None): times.append(time.perf_counter() - self.t)
    t = time.time()
    hist = model.fit(x, y, batch_size=batch, epochs=2, verbose=0, callbacks=[T()])
    steady = float(np.median(times[steps + 3:])) if len(times) > steps + 3 else float(np.median(times[2:]))
    out = {"policy": policy, "params": count_params(model), "first_epoch_s_incl_compile": None,
           "median_step_s": steady, "patches_per_s": batch / steady,
           "loss_per_epoch": [float(v) for v in hist.history["loss"]],
           "finite": bool(np.isfinite(hist.history["loss"]).all()),
           "logits_dtype": str(model.outputs[0].dtype), "wall_s": time.time() - t}
    # Inference windows.
    xb = x[:batch]
    model.predict_on_batch(xb)
    t = time.perf_counter()
    for _ in range(10):
        p = model.predict_on_batch(xb)
    out["infer_window_s"] = (time.perf_counter() - t) / 10 / batch
    out["infer_logits_finite"] = bool(np.isfinite(np.asarray(p, dtype="float32")).all())
    return model, out

model, r = train_bench("mixed_float16")
log("train_mixed_float16", r)
# 4. Sliding window over a 512x512x300 scan at 0.7x0.7x1.25 mm resampled to default.yaml's
#    0.8x0.8x1.25 mm (448x448x300), windows 128x128x96, overlap 0.5, batch 2.
vol = rng.random(VOL, dtype=np.float32)
fwd = jax.jit(lambda b: jax.nn.sigmoid(model(b, training=False)))
def predict_fn(b):
    return np.asarray(fwd(b), dtype=np.float32)
t = time.time()
probs = sliding_window_inference(vol, predict_fn, window=PATCH, overlap=0.5, batch_size=2)
log("sliding_window_448x448x300", {"seconds": time.time() - t, "windows": len(window_positions(vol.shape, PATCH, 0.5)),
                                    "finite": bool(np.isfinite(probs).all())})
if time.time() - T0 < 330:
    _, r = train_bench("float32")
    log("train_float32", r)
log("total_s", time.time() - T0)
