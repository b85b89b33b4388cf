"""The trained ``conditioned`` model: prediction from image features AND the stored measured spots.

:func:`.fit.train_conditioned` returns it and
:func:`napari_histosge.models.load_model` rebuilds it from a checkpoint. The
training spots are its *reference set* (positions, log-expression, image inputs); a
prediction at any position reads its nearest reference spots, and is blended with the
HisToSGE companion where there is one.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ...errors import InputError
from ...training.config import config_from_dict
from ...training.inputs import ModelInputs, as_matrix
from ...training.trained_model import TrainedModel
from ..histosge_trained import HisToSGETrainedModel
from ..neighbours import neighbour_context
from .config import ConditionedConfig
from .counting_noise import counting_std
from .kriging import ESTIMATORS
from .kriging_fit import describe_shares
from .meta import ConditionedMeta


def image_inputs(inputs: ModelInputs, features: np.ndarray, mean_rgb: np.ndarray) -> np.ndarray:
    """z-scored image features + mean RGB (the position columns of ``ModelInputs`` are not used)."""
    return ((np.concatenate([features, mean_rgb], axis=1) - inputs.mean) / inputs.std).astype(np.float32)


#: Weights of the HisToSGE companion tried on its validation spots (``histosge_weight`` None).
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The companion's weight where none could be chosen (no validation spots, an interrupted run).
DEFAULT_BLEND = 0.5


class ConditionedTrainedModel(TrainedModel):
    """A trained conditioned model: predicts from image features AND its stored measured spots.

    ``meta`` (:class:`.meta.ConditionedMeta`) adds the reference spots' spacing, the
    kriging, the depth term and, with a HisToSGE companion, ``histosge["members"]`` (the
    settings and metadata of each of its models) and ``histosge["weight"]`` (its weight);
    ``model_kwargs["n_ref"]`` is the reference-set size.

    The prediction is the conditional mean, blended with the companion's prediction where
    there is one: ``(1 - w) * conditioned + w * histosge`` with ``w`` = :attr:`blend_weight`
    (``config.histosge_weight``, or chosen on validation spots when that is ``None``) and
    ``histosge`` the mean of the companion models (:attr:`companions`); generator samples
    move with it, so the spread is unchanged.
    """

    config: ConditionedConfig
    meta: ConditionedMeta
    meta_class = ConditionedMeta
    predicts_other_sections = False  # its context is the measured spots of its own section

    @property
    def blend_weight(self) -> float:
        """Weight of the companion in the prediction (0 without one)."""
        if self.model.histosge is None:
            return 0.0
        return float((self.meta.histosge or {}).get("weight", DEFAULT_BLEND))

    @cached_property
    def companions(self) -> tuple[HisToSGETrainedModel, ...]:
        """The HisToSGE models whose mean is blended into the predictions (empty without a companion).

        Built once, as every prediction (and every distributed piece of one) asks
        for them several times. They were trained on the same spots with the same validation
        split, so they share their inputs and batch plan.
        """
        if self.model.histosge is None:
            return ()
        return tuple(HisToSGETrainedModel(module, config_from_dict(info["config"]), self.genes, info["meta"])
                     for module, info in zip(self.model.histosge, (self.meta.histosge or {})["members"], strict=True))

    def companion_mean(self, rows, batches) -> np.ndarray:
        """Mean prediction of :attr:`companions` over the planned ``batches`` (their ``rows``)."""
        return np.asarray(np.mean([member.predict_planned(rows, batches)[0] for member in self.companions],
                                  axis=0, dtype=np.float32))

    def companion_predict(self, features, mean_rgb, positions) -> np.ndarray:
        """Mean prediction of :attr:`companions` at ``positions``.

        Their shared inputs and batch plan are built once for all of them.
        """
        lead = self.companions[0]
        rows = lead.prediction_inputs(features, mean_rgb, positions)
        return self.companion_mean(rows, lead.plan_batches(positions))

    def _context(self, features, mean_rgb, positions):
        d = int(self.meta.n_features or 0)
        positions = as_matrix(positions, "positions", 2, None, np.float64)
        n = len(positions)
        features = as_matrix(features, "features", d, n)
        mean_rgb = as_matrix(mean_rgb, "mean_rgb", 3, n)
        img = image_inputs(self._inputs(), features, mean_rgb)
        ref = self.model.ref_positions.detach().cpu().numpy()
        idx, geo, valid = neighbour_context(ref, positions, self.config.neighbours,
                                            spacing=float(self.meta.spacing_px or 0.0))
        return img, idx, geo, valid

    def prediction_inputs(self, features, mean_rgb, positions, *, frame=None) -> tuple[np.ndarray, ...]:
        """Per-row inputs ``(image, neighbour index, geometry, valid)`` at ``positions``.

        ``frame`` must be ``None``: a conditioned model is trained on one section.
        """
        if frame is not None:
            raise InputError("a conditioned model is trained on one section; it takes no frame")
        rows = self._context(features, mean_rgb, positions)
        if self.companions:  # the companions' shared ``(x, bins)`` follow
            rows = (*rows, *self.companions[0].prediction_inputs(features, mean_rgb, positions))
        return rows

    def plan_batches(self, positions, batch_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The forward passes that predict ``positions``: ``(index, mask)`` per pass, in order.

        Consecutive runs of queries (queries do not attend to each other), or, with a HisToSGE
        companion, its spatial groups (which both models can run).
        """
        if self.companions:
            return self.companions[0].plan_batches(positions, int(batch_size or 4 * self.config.batch_size))
        n = len(np.asarray(positions))
        step = int(batch_size or 4 * self.config.batch_size)
        return [(np.arange(s, min(s + step, n))[None], np.zeros((1, min(s + step, n) - s), bool))
                for s in range(0, n, step)]

    def _run(self, rows, batches, *, first_batch: int, n_samples: int, keep_samples: bool,
             counting_noise: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(pred, std, samples)``: batch by batch, so only what is asked for is kept."""
        import torch

        img, idx, geo, valid = rows[:4]
        n, g = len(img), len(self.genes)
        pred = np.zeros((n, g), np.float32)
        std = np.zeros((n, g), np.float32) if n_samples else None
        samples = np.zeros((n_samples, n, g), np.float32) if keep_samples else None
        depth = np.zeros(n, np.float32)  # kriged z-scored log depth, for the counting noise
        model, dev = self.model, self.device
        model.eval()
        with torch.inference_mode():
            for b, (index, mask) in enumerate(batches):
                sl = index[~mask]
                args = [torch.from_numpy(a[sl]).to(dev) for a in (img, idx, geo, valid)]
                out = model(*args)
                mean_z = out["mean"]
                if "depth" in out:
                    depth[sl] = out["depth"].cpu().numpy()
                if std is None:  # no samples asked for
                    pred[sl] = model.to_expression(mean_z).cpu().numpy()
                    continue
                # Noise seeded per forward pass: the same call gives the same samples, and a
                # pass run elsewhere (distributed prediction) draws the same noise.
                gen = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + first_batch + b)
                res = torch.stack([model.sample_residual(out["context"], self.config.sample_steps, gen)
                                   for _ in range(n_samples)])
                draws = model.to_expression(mean_z[None] + res)
                # The point estimate is the conditional mean: the average of a few samples carries
                # their noise (held-out PCC fell on 3 of 6 real sections with it, docs/benchmarks.md).
                pred[sl] = model.to_expression(mean_z).cpu().numpy()
                std[sl] = draws.std(0, unbiased=False).cpu().numpy()
                if samples is not None:
                    samples[:, sl] = draws.cpu().numpy()
        weight = self.blend_weight
        if self.companions and weight > 0:
            # Rows no batch names are 0 in both, so a partial plan (distributed) blends alike.
            shift = weight * (self.companion_mean(rows[4:], batches) - pred)
            pred += shift
            if samples is not None:
                samples += shift[None]
        counting = self.meta.depth_term or {}
        if counting_noise and std is not None and "log_mean" in counting:  # older checkpoints lack it
            # What a spot measured here would read scatters by Poisson counting around the
            # prediction too (.counting_noise); the samples' spread only covers the expectation.
            counts = np.exp(depth.astype(np.float64) * counting["log_sd"] + counting["log_mean"])
            std = np.sqrt(std**2 + counting_std(pred, counts)**2).astype(np.float32)
        return pred, std, samples

    def predict_planned(self, rows, batches, *, first_batch: int = 0,
                        counting_noise: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the forward passes ``batches``: ``(pred, std)``, ``std`` ``None`` without diffusion."""
        s = self.config.n_samples if self.model.use_diffusion else 0
        pred, std, _ = self._run(rows, batches, first_batch=first_batch, n_samples=s, keep_samples=False,
                                 counting_noise=counting_noise)
        return pred, std

    def predict_samples(self, features, mean_rgb, positions, *, n_samples: int | None = None,
                        batch_size: int | None = None) -> np.ndarray:
        """Draw generator samples: ``(n_samples, n, G)`` float32 log-normalised expression.

        Each sample is the conditional mean plus one residual from the diffusion model
        (deterministic DDIM from seeded noise: the same call gives the same samples).

        Raises
        ------
        InputError
            If the model was trained without the diffusion component, or ``n_samples < 1``.
        """
        if not self.model.use_diffusion:
            raise InputError("this model was trained without the diffusion component, so it cannot sample")
        s = self.config.n_samples if n_samples is None else int(n_samples)
        if s < 1:
            raise InputError(f"n_samples must be at least 1, got {n_samples}")
        rows = self.prediction_inputs(features, mean_rgb, positions)
        samples = self._run(rows, self.plan_batches(positions, batch_size), first_batch=0, n_samples=s,
                            keep_samples=True)[2]
        if samples is None:  # keep_samples=True always keeps them
            raise RuntimeError("the generator samples were not kept")
        return samples

    def training_summary(self) -> str:
        """How training went: epochs, the kriging's estimators and the companion's weight.

        The estimators are counted over genes (which genes lean on the image, which on their
        neighbours alone).
        """
        text = super().training_summary()
        meta = self.meta
        if meta.kriging is not None:
            text += f"\nkriging estimators (share of genes): {describe_shares(meta.kriging['share'])}"
        if meta.depth_term is not None:
            text += (f"\nsequencing-depth term on {meta.depth_term['genes']} genes "
                     "(those counted less than once per spot on average)")
        if meta.histosge is not None:
            kept = ", ".join(str(m["meta"].get("best_epoch")) for m in meta.histosge["members"])
            how = "set" if self.config.histosge_weight is not None else "chosen on validation spots"
            n = len(meta.histosge["members"])
            text += (f"\nblended with its HisToSGE companion, the mean of {n} model{'s' * (n > 1)} "
                     f"(weight {self.blend_weight:g}, {how}; weights of epoch {kept})")
        return text

    def gene_estimators(self) -> list[str] | None:
        """Per gene, the kriging estimator (``plain``, ``coupled`` or ``drift``); ``None`` without neighbours."""
        if self.meta.kriging is None:
            return None
        return [ESTIMATORS[int(c)] for c in self.model.choice.cpu().tolist()]

    def predict(self, features, mean_rgb, positions, *, frame=None, batch_size: int | None = None,
                return_std: bool = False, counting_noise: bool = True):
        """Predict log-normalised expression ``(n, G)`` float32 at ``positions``.

        The prediction is the conditional mean. With the diffusion component,
        ``config.n_samples`` generator samples give the per-gene spread of the expected value
        (``return_std``); with the sequencing-depth term, the Poisson counting noise of a spot
        measured there, at the neighbours' kriged depth, is added to it (:mod:`.counting_noise`),
        so the spread is that of a measurement, wider than :meth:`predict_samples`' own.

        Parameters
        ----------
        features, mean_rgb, positions
            Image features, mean RGB and full-res ``(x, y)`` of the query positions.
        batch_size
            Queries per forward pass.
        return_std
            Also return the per-spot, per-gene standard deviation (see above).
        counting_noise
            ``False``: the spread of the expected value alone (the generator samples'), without
            the counting noise of a measurement.

        Returns
        -------
        numpy.ndarray or tuple
            ``pred`` or ``(pred, std)``, both ``(n, G)`` float32.

        Raises
        ------
        InputError
            Bad input shapes, or ``return_std`` for a model trained without diffusion.
        """
        if return_std and not self.model.use_diffusion:
            raise InputError("uncertainty needs the diffusion component; this model was trained without it")
        rows = self.prediction_inputs(features, mean_rgb, positions, frame=frame)
        pred, std = self.predict_planned(rows, self.plan_batches(positions, batch_size),
                                         counting_noise=counting_noise)
        return (pred, std) if return_std else pred
