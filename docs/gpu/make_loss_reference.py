import os, numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
import keras
from losses import get_loss, LOSS_NAMES
rng = np.random.default_rng(0)
y = (rng.random((2, 16, 16, 16, 1)) < 0.1).astype("float32")
z = rng.normal(0, 3, (2, 16, 16, 16, 1)).astype("float32")
ref = {"y": y, "z": z}
for name in LOSS_NAMES:
    ref[name] = np.float64(keras.ops.convert_to_numpy(get_loss(name)(y, z)))
    print(name, ref[name])
np.savez("docs/gpu/loss_ref.npz", **ref)
