"""Gradient flow through time: how much of the loss at the last step reaches the hidden state t steps back.

For windows of real text x_0 .. x_T (and the word after x_T as the target), with L_T the cross entropy of the
prediction at the last step, this measures ||dL_T / dh_{T-t}|| for t = 0..T: the norm (over units) of the gradient
with respect to one layer's hidden state, per text window, averaged over all windows. A vanilla tanh RNN loses it
geometrically (vanishing gradient); the same RNN with its recurrent kernel scaled up gains it geometrically
(exploding gradient) unless the gradient flowing back through each step is clipped; LSTM and GRU gates keep it.
In a deep stack, the gradient reaching layer 1 shows what links across layers (residual, dense, highway) do.

The gradient is the total derivative: a perturbation e added to h_{T-t} of layer l (h <- h + e, inside the
forward pass, at every step and layer at once) moves L_T by dL_T/de, which reaches L_T through every later step
and every layer above. One backward pass gives all of them. That backward pass is the only backend-specific part
of the project's model code: see `value_and_gradient`.

Example:
    >>> curves = gradient_flow(model, windows, layer=1)           # model: lm.model.LanguageModel
    >>> curves["grad_norm"][0], curves["grad_norm"][-1]           # t = 0 and t = T
"""

from __future__ import annotations

import re

import keras
import numpy as np
from keras import ops

from lm.errors import UserError

_ENTRY = re.compile(r"^(rnn|gru|lstm)(?:\*([0-9]*\.?[0-9]+))?$")


def value_and_gradient(fn, x):
    """(fn(x), d fn(x) / dx) for a scalar-valued `fn`, by the active Keras backend's autodiff.

    Keras 3 has no backend-neutral gradient of a function, so this is the one branch per backend; everything that
    `fn` computes is keras.ops and Keras layers.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return jax.value_and_grad(fn)(ops.convert_to_tensor(x))
    if backend == "tensorflow":
        import tensorflow as tf
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x)
    if backend == "torch":
        import torch
        x = ops.convert_to_tensor(x).detach().requires_grad_(True)
        y = fn(x)
        (grad,) = torch.autograd.grad(y, x)
        return y, grad
    raise UserError(f"gradients need the jax, tensorflow or torch Keras backend, not {backend}")


def clip_backward(x, max_norm: float):
    """Identity going forward; going backward, the gradient of each row (batch, features) is scaled down to norm
    `max_norm` when it is larger: gradient clipping applied to what flows back through one time step."""
    @ops.custom_gradient
    def clipped(value):
        def grad(*args, upstream=None):  # JAX/TF pass the upstream gradient positionally, PyTorch by keyword
            upstream = args[0] if upstream is None else upstream
            norm = ops.sqrt(ops.sum(ops.square(upstream), axis=-1, keepdims=True))  # (batch, 1)
            return upstream * ops.minimum(1.0, max_norm / ops.maximum(norm, 1e-12))
        return ops.copy(value), grad
    return clipped(x)


def last_step_loss(model, inputs, targets, perturbation, clip: float | None = None):
    """Summed over rows, the cross entropy of the prediction after the last input, with `perturbation` added to
    every layer's hidden state at every step.

    Args:
        model: a LanguageModel (stateless use: states start at zero, dropout off).
        inputs: (batch, T + 1) token ids x_0 .. x_T.
        targets: (batch,) the word after x_T.
        perturbation: (layers, batch, T + 1, units), zeros: the point at which the gradient is taken.
        clip: clip the gradient flowing back through each step (every state tensor, per row) to this norm.
    """
    stack = model.stack
    batch, steps = inputs.shape
    embedded = model.embedding(inputs)  # (batch, T + 1, embed)
    states = stack.initial_states(batch)
    x = None
    for t in range(steps):
        if clip and t > 0:
            states = [[clip_backward(s, clip) for s in layer] for layer in states]
        x = embedded[:, t]  # (batch, embed)
        new_states = []
        for i, cell in enumerate(stack.cells):
            h, s = cell(x, list(states[i]), training=False)  # h: (batch, units)
            s = list(s) if isinstance(s, (list, tuple)) else [s]
            h = h + perturbation[i, :, t]  # the hidden state that goes up and on in time
            new_states.append([h] + s[1:])  # [h] or [h, c]: a cell's first state is its output
            x = stack.link(i, x, h, training=False)
        states = new_states
    logits = model.logits_from_hidden(x)  # (batch, vocab)
    losses = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)  # (batch,)
    return ops.sum(losses)


def gradient_flow(model, windows: np.ndarray, clip: float | None = None, batch_size: int = 32,
                  progress=None) -> dict:
    """||dL_T / dh_{T-t}|| for every layer and t = 0..T, averaged over `windows`.

    Args:
        model: a LanguageModel.
        windows: (n, T + 2) token ids: inputs x_0 .. x_T and the target after them.
        clip: see `last_step_loss`.
        batch_size: windows per backward pass.
        progress: an optional callable run after each batch (a progress bar's update).

    Returns:
        {"t": [0..T], "grad_norm_by_layer": (layers, T + 1) list of lists, t ascending (t = 0 is the last step)}.
    """
    stack = model.stack
    steps = windows.shape[1] - 1
    total = np.zeros((stack.num_layers, steps), "float64")
    rows = 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start: start + batch_size]
        inputs, targets = chunk[:, :-1], chunk[:, -1]
        zeros = np.zeros((stack.num_layers, len(chunk), steps, stack.units), "float32")
        fn = lambda e: last_step_loss(model, ops.convert_to_tensor(inputs), ops.convert_to_tensor(targets), e, clip)
        _, grad = value_and_gradient(fn, zeros)
        grad = np.zeros_like(zeros) if grad is None else ops.convert_to_numpy(grad)  # (layers, batch, T + 1, units)
        total += np.linalg.norm(grad.astype("float64"), axis=-1).sum(axis=1)  # (layers, T + 1)
        rows += len(chunk)
        if progress:
            progress()
    mean = total / max(rows, 1)
    return {"t": list(range(steps)), "grad_norm_by_layer": mean[:, ::-1].tolist()}


def text_windows(ids: np.ndarray, steps: int, count: int) -> np.ndarray:
    """`count` windows of `steps + 2` consecutive ids, evenly spaced over the stream: (count, steps + 2)."""
    width = steps + 2
    if len(ids) < width:
        raise UserError(f"the text ({len(ids)} tokens) is shorter than --steps {steps} + 2")
    starts = np.linspace(0, len(ids) - width, num=count).astype("int64")
    return np.stack([ids[s: s + width] for s in starts])


def parse_entries(archs: str, links: str, gate_inits: str = "keras") -> list[tuple[str, str, float, str, str]]:
    """"rnn,gru,lstm,rnn*3", "none,residual" and "keras,chrono" -> [(label, cell type, recurrent-kernel scale,
    links, gate init), ...]. A plain RNN has no gates: it gets one entry (gate init "keras") whatever the list.
    Labels: "lstm", "lstm+residual" (several links), "lstm (chrono)", "lstm (chrono-forget)"."""
    link_list = [x.strip().lower() for x in links.split(",") if x.strip()] or ["none"]
    from lm.recurrent import GATE_INITS, LINKS
    for link in link_list:
        if link not in LINKS:
            raise UserError(f"unknown --links {link!r}: choose from {', '.join(LINKS)} (comma-separated)")
    init_list = list(dict.fromkeys(x.strip().lower() for x in gate_inits.split(",") if x.strip()))
    if not init_list or any(init not in GATE_INITS for init in init_list):
        raise UserError(f"--gate-init {gate_inits!r}: choose from {', '.join(GATE_INITS)} (comma-separated)")
    entries = []
    for item in [x.strip().lower() for x in archs.split(",") if x.strip()]:
        match = _ENTRY.match(item)
        if not match:
            raise UserError(f"unknown --arch entry {item!r}: use rnn, gru or lstm, optionally *SCALE to scale the "
                            "recurrent kernel (e.g. 'rnn*3')")
        cell, scale = match.group(1), float(match.group(2) or 1.0)
        inits = init_list if cell != "rnn" else ["keras"]
        if cell == "gru" and "chrono" in inits:  # a GRU's gates are coupled: chrono-forget is chrono's start
            inits = [init for init in inits if init != "chrono-forget"]
        for init in inits:
            for link in link_list:
                label = item if len(link_list) == 1 and link == "none" else f"{item}+{link}"
                label += f" ({init})" if init != "keras" else ""
                entries.append((label, cell, scale, link, init))
    if not entries:
        raise UserError("--arch is empty")
    return entries


def fresh_model(vocab_size: int, cell_type: str, units: int, layers: int = 1, links: str = "none",
                scale: float = 1.0, seed: int = 0, embed_std: float = 0.3, forget_bias: float = 1.0,
                gate_init: str = "keras", chrono_max: float = 50.0):
    """A freshly initialised LanguageModel (Keras' initialisers, the same seed for every entry), then:

    Args:
        scale: every recurrent kernel multiplied by this (> 1: the exploding case).
        embed_std: embeddings drawn from N(0, embed_std^2), the scale of real word vectors (0: Keras' default
            uniform +-0.05, under which a tanh RNN stays in its linear range and nothing saturates).
        forget_bias: the LSTM forget-gate bias (Keras starts it at 1); for gate_init="keras" only.
        gate_init, chrono_max: how the gate biases start, as `lm train --gate-init` (lm.recurrent.ChronoBias).
    """
    from lm.model import LanguageModel
    keras.utils.set_random_seed(seed)
    model = LanguageModel(vocab_size=vocab_size, cell_type=cell_type, units=units, num_layers=layers, links=links,
                          gate_init=gate_init, chrono_max=chrono_max)
    model(np.zeros((1, 2), "int32"))
    if embed_std:
        rng = np.random.default_rng(seed)
        model.embedding.embeddings.assign(rng.normal(0.0, embed_std, model.embedding.embeddings.shape).astype("float32"))
    for cell in model.stack.cells:
        if scale != 1.0:
            cell.recurrent_kernel.assign(cell.recurrent_kernel * scale)
        if cell_type == "lstm" and forget_bias != 1.0 and gate_init == "keras":
            bias = ops.convert_to_numpy(cell.bias).copy()  # gates i, f, c, o
            bias[units: 2 * units] = forget_bias
            cell.bias.assign(bias)
    return model


def pyplot():
    """matplotlib.pyplot on a file-only backend, or a one-line UserError naming the extra to install."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the plot needs matplotlib: pip install 'attend-caption-lm[plots]' (or leave out --out)") \
            from None
    return plt


def plot_curves(results: dict, path: str, title: str, layer_label: str) -> None:
    """One line per entry, log-scale y: the gradient norm against t. An entry labelled "X (chrono)" is drawn dashed,
    "X (chrono-forget)" dotted, in the colour of "X", so each model's starts read as a group. Needs matplotlib (the
    [plots] extra)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = {}
    for label, curve in results.items():
        t, g = np.asarray(curve["t"]), np.asarray(curve["grad_norm"], "float64")
        keep = g > 0  # log scale: a gradient that underflowed to zero cannot be drawn
        base, _, init = label.partition(" (")
        style = {"chrono)": dict(linestyle="--"), "chrono-forget)": dict(linestyle=":")}.get(init, {})
        if base in colours:
            style["color"] = colours[base]
        (line,) = ax.plot(t[keep], g[keep], label=label, linewidth=2, **style)
        colours.setdefault(base, line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("t: steps back from the last step")
    ax.set_ylabel(r"$\Vert\partial L_T \,/\, \partial h_{T-t}\Vert$" + f"   ({layer_label})")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
