"""Tests for l2d.models: shapes, pinned parameter counts, gradient flow, BatchNorm wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d.errors import L2DError
from l2d.models import DEFAULT_WIDTHS, MODELS, build_model


def count_params(model: nnx.Module) -> int:
    """Trainable parameters only: BatchNorm running statistics are BatchStat, not Param."""
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def rngs() -> nnx.Rngs:
    # On this CPU, XLA compiles threefry sampling for each new parameter shape in ~1 s; the
    # "rbg" generator compiles ~5x faster. Tests check structure, not the random stream.
    return nnx.Rngs(jax.random.key(0, impl="rbg"))


def small_model(name: str, **kwargs) -> nnx.Module:
    # One shape configuration across tests, so parameter init and ops compile once per process.
    return build_model(name, image_shape=(16, 16, 3), num_outputs=10, width=4, rngs=rngs(),
                       **kwargs)


def images(batch: int = 4, size: int = 16, channels: int = 3, seed: int = 0) -> jax.Array:
    # 16x16 so the last ResNet stage is 2x2: with 1x1 maps and a tiny batch, train-mode
    # BatchNorm outputs +-1 whatever its input and the gradient through it vanishes.
    return jax.random.normal(jax.random.key(seed), (batch, size, size, channels), jnp.float32)


@nnx.jit
def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    # One compiled call instead of compiling every eager op for every new shape.
    return model(x)


# Hand counts. conv kxk from c_in to c_out without bias: k*k*c_in*c_out. BatchNorm(c): scale + bias
# = 2c. Dense(c -> n): c*n + n.
#
# cnn, width 32, 3 -> 10:
#   conv1 3*3*3*32 = 864, conv2 = conv3 = 3*3*32*32 = 9216, 3 BatchNorms 3*64 = 192,
#   head 32*10 + 10 = 330  ->  864 + 2*9216 + 192 + 330 = 19818
#
# preact_resnet10, width w, 3 -> 10. Block c_in -> c_out: bn1 2*c_in + conv1 9*c_in*c_out
#   + bn2 2*c_out + conv2 9*c_out^2 (+ 1x1 shortcut c_in*c_out when the shape changes).
#   w = 64: stem 9*3*64 = 1728
#     stage 1 (64 -> 64, identity):  128 + 36864 + 128 + 36864           =   73984
#     stage 2 (64 -> 128):           128 + 73728 + 256 + 147456 + 8192    =  229760
#     stage 3 (128 -> 256):          256 + 294912 + 512 + 589824 + 32768  =  918272
#     stage 4 (256 -> 512):          512 + 1179648 + 1024 + 2359296 + 131072 = 3671552
#     final BatchNorm 2*512 = 1024, head 512*10 + 10 = 5130
#     total 1728 + 73984 + 229760 + 918272 + 3671552 + 1024 + 5130 = 4901450
#   w = 4: stem 108; stages 304, 920, 3632, 14432; final BN 64; head 330  ->  19790
def preact_resnet10_count(w: int, c: int, n: int) -> int:
    def block(c_in: int, c_out: int) -> int:
        shortcut = c_in * c_out if c_in != c_out else 0
        return 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + shortcut

    stages = block(w, w) + block(w, 2 * w) + block(2 * w, 4 * w) + block(4 * w, 8 * w)
    return 9 * c * w + stages + 2 * 8 * w + 8 * w * n + n


@pytest.mark.parametrize(
    "name, width, expected",
    [("cnn", 32, 19818), ("preact_resnet10", 64, 4901450), ("preact_resnet10", 4, 19790)],
)
def test_parameter_counts_are_pinned(name, width, expected):
    # eval_shape builds the same module tree with abstract arrays: no init compute at all.
    model = nnx.eval_shape(lambda: build_model(name, image_shape=(16, 16, 3), num_outputs=10,
                                               width=width, rngs=nnx.Rngs(0)))
    assert count_params(model) == expected
    if name == "preact_resnet10":
        assert preact_resnet10_count(width, 3, 10) == expected
    else:
        assert 9 * 3 * width + 2 * 9 * width * width + 3 * 2 * width + width * 10 + 10 == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_dtype(name):
    logits = forward(small_model(name), images())
    assert logits.shape == (4, 10)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # Default width, default threefry keys, other sizes: shapes only, via abstract evaluation.
    model = nnx.eval_shape(lambda: build_model(name, image_shape=(20, 16, 1), num_outputs=5,
                                               width=None, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m(x), model,
                         jax.ShapeDtypeStruct((2, 20, 16, 1), jnp.float32))
    assert (out.shape, out.dtype) == ((2, 5), jnp.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
    model = small_model(name, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert forward(model, images()).dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradient_reaches_every_param(name):
    model = small_model(name)
    model.train()
    x = images()
    labels = jnp.array([0, 1, 2, 3])

    @nnx.jit
    def grad_fn(m):
        def loss_fn(m):
            log_probs = jax.nn.log_softmax(m(x))
            return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

        return nnx.grad(loss_fn)(m)

    grad_leaves = jax.tree.leaves_with_path(grad_fn(model))
    assert len(grad_leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    dead = [jax.tree_util.keystr(path) for path, g in grad_leaves if not jnp.linalg.norm(g) > 0]
    assert not dead, f"no gradient reaches: {dead}"


def test_preact_block_conv1_reads_preactivated_input():
    # The first block is an identity block: out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + x. Had
    # conv1 read x (the original bug), bn1 would not touch the output and this test would fail.
    block = small_model("preact_resnet10").blocks[0]
    assert block.shortcut is None
    x = images(channels=4)
    before = block(x)
    # A bias shift (not a scale: train-mode bn2 would normalise a rescale away) moves where the
    # ReLU cuts in `a = relu(bn1(x))`.
    block.bn1.bias[...] = jax.random.normal(jax.random.key(1), (4,))
    after = block(x)
    assert not np.allclose(before, after, atol=1e-3)


def test_preact_block_projection_wiring():
    block = small_model("preact_resnet10").blocks[1]  # 4 -> 8 channels, stride 2
    block.eval()  # running statistics, so repeated calls see the same normalisation
    block.bn1.bias[...] = jnp.linspace(-1.0, 1.0, 4)
    x = images(channels=4)
    a = nnx.relu(block.bn1(x))
    expected = block.conv2(nnx.relu(block.bn2(block.conv1(a)))) + block.shortcut(a)
    out = block(x)
    assert out.shape == (4, 8, 8, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_preact_downsampling_branch_and_shortcut_read_the_same_pixels():
    # With centre-tap kernels, the stride-2 3x3 conv1 and the stride-2 1x1 shortcut must both
    # copy input pixel (2i, 2j) to output (i, j); "SAME" padding shifted conv1's window by one.
    block = small_model("preact_resnet10").blocks[1]  # 4 -> 8 channels, stride 2
    centre = jnp.zeros((3, 3, 4, 8)).at[1, 1].set(jnp.eye(4, 8))
    block.conv1.kernel[...] = centre
    block.shortcut.kernel[...] = centre[1:2, 1:2]
    x = images(size=16, channels=4)
    np.testing.assert_allclose(block.conv1(x), block.shortcut(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(block.shortcut(x)[..., :4], x[:, ::2, ::2, :], rtol=1e-6)


@pytest.mark.parametrize("name", ["cnn", "preact_resnet10"])
def test_train_and_eval_modes_differ(name):
    model = small_model(name)
    x = images()
    x_shuffled = x[::-1]  # same samples, same batch shape, so batch statistics are unchanged
    x_mixed = x.at[1:].set(images(seed=1)[1:])  # sample 0 kept, its batch-mates replaced
    model.train()
    train_logits = forward(model, x)
    np.testing.assert_allclose(forward(model, x_shuffled)[::-1], train_logits, rtol=1e-4, atol=1e-5)
    # In train mode a sample's logits depend on the rest of the batch (batch statistics) ...
    assert not np.allclose(forward(model, x_mixed)[0], train_logits[0], atol=1e-4)
    model.eval()
    eval_logits = forward(model, x)
    assert not np.allclose(train_logits, eval_logits, atol=1e-4)
    # ... in eval mode they do not (running statistics).
    np.testing.assert_allclose(forward(model, x_mixed)[0], eval_logits[0], rtol=1e-5, atol=1e-5)


def test_netsimple_is_the_cifar_k_network():
    # The benchmark's NetSimple(11 outputs, 50, 50, 100, 20) on 32x32x3: conv 5*5*3*50 + 50,
    # conv 5*5*50*50 + 50, dense (5*5*50)*100 + 100, 100*20 + 20, 20*11 + 11.
    model = nnx.eval_shape(lambda: build_model("netsimple", image_shape=(32, 32, 3),
                                               num_outputs=11, width=None, rngs=nnx.Rngs(0)))
    expected = (3750 + 50) + (62500 + 50) + (125000 + 100) + (2000 + 20) + (220 + 11)
    assert count_params(model) == expected == 193_701
    # No BatchNorm: the modes give the same outputs.
    model = small_model("netsimple")
    x = images()
    model.train()
    train_logits = forward(model, x)
    model.eval()
    np.testing.assert_array_equal(forward(model, x), train_logits)
    # PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases included.
    first = nnx.state(model, nnx.Param)["convs"][0]
    bound = 1 / np.sqrt(5 * 5 * 3)
    for leaf in (first["kernel"], first["bias"]):
        values = np.asarray(leaf.get_value())
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.8 * bound


def test_netsimple_refuses_images_too_small():
    with pytest.raises(L2DError, match="netsimple.*12x12 are too small"):
        build_model("netsimple", image_shape=(12, 12, 3), num_outputs=10, width=None,
                    rngs=nnx.Rngs(0))


def test_build_model_rejects_unknown_name():
    with pytest.raises(L2DError, match="valid names: cnn, netsimple, preact_resnet10"):
        build_model("resnet50", image_shape=(16, 16, 3), num_outputs=10, width=None,
                    rngs=nnx.Rngs(0))


def test_build_model_rejects_bad_width():
    with pytest.raises(L2DError, match="width must be >= 1, got 0"):
        build_model("cnn", image_shape=(16, 16, 3), num_outputs=10, width=0, rngs=nnx.Rngs(0))


def test_default_widths_cover_registry():
    assert set(DEFAULT_WIDTHS) == set(MODELS)


def test_netsimple_computes_the_convolutions_and_pools_of_xla():
    # Its slices-and-matmul convolutions and reshape pooling (faster on a CPU) give what
    # lax.conv and nnx.max_pool give, to float32 rounding; 17x19 images: odd map sizes too.
    model = build_model("netsimple", image_shape=(17, 19, 3), num_outputs=7, width=6,
                        rngs=rngs())
    x = jax.random.normal(jax.random.key(1), (3, 17, 19, 3), jnp.float32)

    def reference(x):
        for conv in model.convs:
            x = jax.lax.conv_general_dilated(
                x, conv.kernel[...], (1, 1), "VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv.bias[...]
            x = nnx.max_pool(nnx.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for layer in model.dense[:-1]:
            x = nnx.relu(layer(x))
        return model.dense[-1](x)

    np.testing.assert_allclose(forward(model, x), jax.jit(reference)(x), rtol=1e-5, atol=1e-5)
