"""Speed and scale switches shared by `lm train` and `captioner train`: bf16 mixed precision, XLA, several devices.

  * `precision(mixed)`: with `mixed=True`, layers built inside compute in bfloat16 and keep float32 weights
    (Keras policy "mixed_bfloat16"); the models cast their logits to float32 before softmax and loss.
  * `full_precision()`: float32 inside (validation and final figures of a model trained in mixed precision).
  * `jit_option("auto" | True | False)`: the `jit_compile` argument of `compile` ("auto" lets Keras decide:
    XLA on JAX, on TensorFlow only with a GPU (never on a CPU-only machine), never on PyTorch; True on PyTorch
    means torch.compile).
  * `distribution(enabled)`: data parallelism over every local accelerator (or every virtual CPU device).
    JAX: `keras.distribution.DataParallel` (weights replicated, each batch split along its first axis);
    TensorFlow: `tf.distribute.MirroredStrategy`, inside whose scope the model is built and compiled.
    PyTorch has no such path here (use `torchrun` and DDP outside this toolkit).
    Several hosts (processes): `cluster()` reads the launch environment. JAX: `KERAS_DISTRIBUTION_JOB_ADDRESSES`
    (the coordinator's host:port), `KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID`, then
    `jax.distributed.initialize` (via `keras.distribution.initialize`) and DataParallel over every process's
    devices, each process feeding its own shard (`auto_shard_dataset=False`); on CPUs the collectives go over
    gloo. TensorFlow: `TF_CONFIG` (cluster and task index) and `tf.distribute.MultiWorkerMirroredStrategy`.
  * `training_options(...)` / `@accelerated`: the two context managers around a whole training function.
  * `host_call(function, shape, dtype, *args)`: a numpy function called from inside a compiled train step (SCST's
    CIDEr-D reward): tf.numpy_function, jax.pure_callback or a plain call, the one backend switch for it.
  * `on_accelerator()`: whether the backend computes on a GPU/TPU (CPU work can then overlap the model's).

Stateful language models keep their carried state (lm.model) in variables of a fixed batch size, created by
`carried_state_variable`: under JAX data parallelism those variables are sharded along the batch axis like the
data, so every device keeps the rows of its own slice of the batch; under MirroredStrategy each replica keeps its
own (batch / replicas, units) copy (a sync-on-read variable; `read_state` / `write_state` / `zero_state` also
serve a whole global batch from cross-replica context, e.g. the build call). The global batch size must be a multiple of the
device count (the data are split evenly); ragged last batches are dropped by the callers.

Nothing here imports TensorFlow at module level (a GPU host may have JAX and PyTorch only).
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import keras
import numpy as np

from lm.errors import UserError

MIXED_POLICY = "mixed_bfloat16"


# ---- precision -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def precision(mixed: bool = False):
    """Inside: the global dtype policy is "mixed_bfloat16" when `mixed` (else unchanged). Restored on exit."""
    if not mixed:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED_POLICY)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def full_precision():
    """Inside: the global dtype policy is "float32" (final evaluation of a model trained in mixed precision)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# ---- XLA -------------------------------------------------------------------------------------------------------
def jit_option(value="auto"):
    """"auto" | True | False | "true" | "false" | None -> the `jit_compile` value for `Model.compile`."""
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on", "xla"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--jit must be auto, true or false, got {value!r}")
    return bool(value)


# ---- host code inside a compiled step ---------------------------------------------------------------------------
def host_call(function, shape, dtype, *args):
    """`function(*numpy arrays) -> numpy array of (shape, dtype)` run on the host from inside traced code.

    TensorFlow: `tf.numpy_function` (inside `tf.function`; not under XLA, so compile with jit_compile=False);
    JAX: `jax.pure_callback` (inside `jit`; `shape` must be static); PyTorch (eager): a plain call. The result has
    no gradient: pass integer inputs (or stop_gradient ones) and treat the output as a constant.

    Example:
        >>> rewards = host_call(lambda words: score(words), (batch,), "float32", words)  # (batch,)
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        out = tf.numpy_function(lambda *a: np.asarray(function(*a), dtype), list(args), dtype, stateful=True)
        out.set_shape(shape)
        return out
    if backend == "jax":
        import jax
        return jax.pure_callback(lambda *a: np.asarray(function(*a), dtype), jax.ShapeDtypeStruct(shape, dtype),
                                 *args)
    out = function(*[keras.ops.convert_to_numpy(a) for a in args])
    return keras.ops.convert_to_tensor(np.asarray(out, dtype))


# ---- devices ---------------------------------------------------------------------------------------------------
def on_accelerator() -> bool:
    """Whether Keras computes on an accelerator (GPU, TPU...) rather than on the CPU, for the current backend.

    Work for the CPU (decoding images) can overlap a model's forward pass there; on a CPU-only machine it takes
    cores from the model's own thread pool instead."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch
        return bool(torch.cuda.is_available() or getattr(torch.backends, "mps", None) and
                    torch.backends.mps.is_available())
    try:
        return any(not str(d).lower().startswith("cpu") for d in keras.distribution.list_devices())
    except Exception:  # a backend without a device list: assume the CPU
        return False


# ---- several devices -------------------------------------------------------------------------------------------
CARRIED_PREFIX = "carried_"


def _jax_data_parallel_class():
    from keras.distribution import DataParallel, TensorLayout

    class StatefulDataParallel(DataParallel):
        """DataParallel whose carried-state variables (named `carried_*`) are split along the batch, like the data."""

        def get_variable_layout(self, variable):
            name = variable.path.rsplit("/", 1)[-1]
            devices = self.device_mesh.devices.size
            if (name.startswith(CARRIED_PREFIX) and len(variable.shape) >= 1 and variable.shape[0]
                    and variable.shape[0] % devices == 0):
                return TensorLayout([self.batch_dim_name] + [None] * (len(variable.shape) - 1), self.device_mesh)
            return super().get_variable_layout(variable)

    return StatefulDataParallel


def cluster() -> tuple[int, int]:
    """(processes, this process's index) of a multi-host run, from the launch environment (module docstring);
    (1, 0) on one host. Bad values are a one-line UserError."""
    import json
    import os
    backend = keras.backend.backend()
    try:
        if backend == "jax" and os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
            n, rank = int(os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"]), int(
                os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "-1"))
            if not os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
                raise ValueError("KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's host:port) is not set")
        elif backend == "tensorflow" and os.environ.get("TF_CONFIG"):
            config = json.loads(os.environ["TF_CONFIG"])
            n, rank = len(config["cluster"]["worker"]), int(config["task"]["index"])
        else:
            return 1, 0
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"bad multi-host environment ({e}); see README 'Several hosts'") from None
    if not 0 <= rank < n:
        raise UserError(f"bad multi-host environment: process index {rank} is not in 0..{n - 1}")
    return n, rank


_INITIALIZED = {}


def _jax_initialize():
    """jax.distributed.initialize once per process (gloo collectives on CPU), via keras.distribution.initialize."""
    if "jax" not in _INITIALIZED:
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize()  # reads the KERAS_DISTRIBUTION_* variables
        _INITIALIZED["jax"] = True


def _patch_keras_multi_worker():
    """Two places where Keras 3's TensorFlow trainer fails under MultiWorkerMirroredStrategy (seen with Keras
    3.15 / TF 2.21), mended for this process: reducing the scalar logs of a step with `axis=0` (invalid for a
    scalar: the mean over replicas is `axis=None`), and the symbolic build handing a whole (x, y) batch of
    per-replica values to `strategy.reduce` (it takes one tensor; the build needs shapes only, so this replica's
    slice serves)."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    reduce_per_replica = tf_trainer.reduce_per_replica

    def reduce_scalars_too(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if tf_trainer._is_per_replica_instance(v) else v,
                values)
        return reduce_per_replica(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(
                    lambda x: (self.distribute_strategy.experimental_local_results(x)[0]
                               if isinstance(x, tf.distribute.DistributedValues) else x), next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_scalars_too
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build


def worker_dataset(batches):
    """A multi-worker TensorFlow run's input: this worker's own batches (a PyDataset of *global* batch size, cut
    from its own shard) as a tf.data.Dataset that the strategy must not shard again (AutoShardPolicy.OFF); the
    strategy splits each batch into per-replica slices, one step each, so every step takes `batch / workers` rows
    of every worker's shard. The batches are read afresh (and `set_epoch` called) at each pass.

    Example:
        >>> model.fit(worker_dataset(CaptionBatches(...)), epochs=4)
    """
    import tensorflow as tf
    first = batches[0]
    signature = keras.tree.map_structure(
        lambda a: tf.TensorSpec((None,) + tuple(a.shape[1:]), tf.as_dtype(a.dtype)), first)
    passes = [0]

    def generate():
        if hasattr(batches, "set_epoch") and passes[0]:
            batches.set_epoch(passes[0])
        passes[0] += 1
        for i in range(len(batches)):
            yield batches[i]

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return tf.data.Dataset.from_generator(generate, output_signature=signature).with_options(options)


def _tf_strategy():
    import tensorflow as tf
    if cluster()[0] > 1:  # TF_CONFIG: one strategy per process, created before any other TensorFlow work
        if "tf" not in _INITIALIZED:
            _INITIALIZED["tf"] = tf.distribute.MultiWorkerMirroredStrategy()
            _patch_keras_multi_worker()
        return _INITIALIZED["tf"]
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    # NCCL is for GPUs; CPU replicas (tests, virtual devices) reduce through one device.
    return tf.distribute.MirroredStrategy([d.name for d in cpus],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


@contextlib.contextmanager
def distribution(enabled: bool = False, batch_size: int | None = None):
    """Inside: data-parallel training over all local devices of the backend (see the module docstring).

    Yields the number of replicas (1 when not enabled). Build, compile and fit the model inside.
    """
    if not enabled:
        yield 1
        return
    backend = keras.backend.backend()
    if backend == "jax":
        multi_host = cluster()[0] > 1
        if multi_host:
            _jax_initialize()
        devices = keras.distribution.list_devices()  # every process's devices on several hosts
        dist = _jax_data_parallel_class()(devices=devices, auto_shard_dataset=not multi_host)
        _check_batch(batch_size, len(devices))
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(dist)
        try:
            yield len(devices)
        finally:
            keras.distribution.set_distribution(previous)
    elif backend == "tensorflow":
        strategy = _tf_strategy()
        _check_batch(batch_size, strategy.num_replicas_in_sync)
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    else:
        raise UserError(f"--distribute needs the JAX or TensorFlow backend, not {backend} "
                        "(set KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow)")


def _check_batch(batch_size, replicas):
    if batch_size and batch_size % replicas:
        raise UserError(f"--batch-size {batch_size} must be a multiple of the {replicas} devices with --distribute")


def replicas() -> int:
    """How many data-parallel replicas are active now (JAX distribution or TensorFlow strategy), 1 if none."""
    dist = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if dist is not None:
        return int(dist.device_mesh.devices.size)
    return _tf_replicas()


def _tf_replicas() -> int:
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf
    return int(tf.distribute.get_strategy().num_replicas_in_sync) if tf.distribute.has_strategy() else 1


def carried_state_variable(layer, batch_size: int, units: int, name: str):
    """A float32, non-trainable, zero-initialised (batch, units) variable tracked by `layer`, for state carried
    across batches (truncated BPTT). Distribution-aware: batch-sharded under JAX DataParallel (by its name, which
    gets the `carried_` prefix), one (batch / replicas, units) copy per replica under a TensorFlow strategy."""
    if not name.startswith(CARRIED_PREFIX):
        name = CARRIED_PREFIX + name
    tf_replicas = _tf_replicas()
    if tf_replicas == 1:
        return layer.add_weight(shape=(batch_size, units), initializer="zeros", dtype="float32", trainable=False,
                                autocast=False, name=name)
    if batch_size % tf_replicas:
        raise UserError(f"batch size {batch_size} must be a multiple of the {tf_replicas} replicas")
    with keras.name_scope(layer.name, caller=layer):
        variable = keras.Variable(initializer="zeros", shape=(batch_size // tf_replicas, units), dtype="float32",
                                  trainable=False, autocast=False, name=name, synchronization="on_read",
                                  aggregation="only_first_replica")
    layer._track_variable(variable)
    return variable


def _cross_replica_copies(variable, rows=None):
    """The per-replica tf.Variables of a carried-state variable when a whole global batch of `rows` meets it in
    TensorFlow's cross-replica context (e.g. a direct model call inside `strategy.scope()`), else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    inner = getattr(variable, "_value", None)
    if not hasattr(inner, "values"):  # not a distributed variable
        return None
    import tensorflow as tf
    copies = list(inner.values)
    if not tf.distribute.in_cross_replica_context():
        return None
    if rows is not None and rows != sum(int(c.shape[0]) for c in copies):
        return None  # a per-replica batch (Keras' symbolic build of the train step)
    return copies


def read_state(variable, rows=None):
    """A carried-state variable's value for a batch of `rows` (None: unknown): the replica's own rows inside a
    replica, all rows (the copies concatenated in replica order, as MirroredStrategy splits a batch) for a global
    batch in cross-replica context."""
    copies = _cross_replica_copies(variable, rows)
    if copies is None:
        return variable.value
    return keras.ops.concatenate([c.read_value() for c in copies], axis=0)


def write_state(variable, value):
    """Stores a carried state computed for the batch at hand (see `read_state`)."""
    copies = _cross_replica_copies(variable, value.shape[0])
    if copies is None:
        variable.assign(value)
        return
    for copy, rows in zip(copies, keras.ops.split(value, len(copies), axis=0)):
        copy.assign(rows)


def zero_state(variable):
    """Zeroes a carried-state variable (every replica's copy)."""
    copies = _cross_replica_copies(variable)
    if copies is None:
        variable.assign(keras.ops.zeros(variable.shape, variable.dtype))  # zeros_like fails on JAX
        return
    for copy in copies:
        copy.assign(keras.ops.zeros(copy.shape, copy.dtype))


# ---- all together ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def training_options(mixed_precision: bool = False, distribute: bool = False, batch_size: int | None = None):
    """`precision(mixed_precision)` and `distribution(distribute)` together; yields the replica count."""
    with precision(mixed_precision), distribution(distribute, batch_size) as n:
        yield n


def accelerated(fn):
    """Decorator for training functions with `mixed_precision`, `distribute` and `batch_size` parameters: runs the
    whole function inside `training_options(...)`, so that every model it builds, compiles and fits gets them."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        options = bound.arguments
        with training_options(bool(options.get("mixed_precision")), bool(options.get("distribute")),
                              options.get("batch_size")):
            return fn(*args, **kwargs)

    return wrapper
