"""A many-step diffusion baseline in the style of SegDiff (Amit et al., 2021), chapter 09.

SegDiff is the diffusion baseline of cDAL's Table 2: a conditional DDPM that predicts the **noise** epsilon
and samples with T = 100 ancestral steps. Here it is rebuilt on cDAL's own generator backbone and light
image encoder (:class:`~diffseg_core.cdal.generator.ConditionalGenerator` with ``out_activation='none'``), with
no latent (z = 0) and no discriminator, so that beside cDAL the only differences are the objective (epsilon
instead of x0), the number of steps (100 instead of 2-4) and D's attention.

* :mod:`.config` — the presets (the cDAL preset's generator widths, T = 100);
* :mod:`.diffusion` — the epsilon objective and the ancestral sampler (pure functions);
* :mod:`.method` — the plug-in for the shared loop (``train --method segdiff``).
"""
from .config import SegDiffConfig
from .diffusion import eps_loss, predict_x0_from_eps, sample_segdiff
from .method import SegDiffMethod

__all__ = ["SegDiffConfig", "eps_loss", "predict_x0_from_eps", "sample_segdiff", "SegDiffMethod"]
