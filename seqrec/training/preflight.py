"""Checks a training run passes before any work starts: each failure is one ConfigError line.

`seqrec.config.validate` checks the values themselves (ranges, cross-field rules); this module
checks what they point at: the prepared data folder, the scheduler name, the folder given as
``train.init_from``, and the backbone (an alias, a local folder, or a hub id that is cached or
may be fetched; never contacting the Hub to find out). When every backbone file is local,
``HF_HUB_OFFLINE`` is switched on so no library looks the base model up on the Hub.
"""

from __future__ import annotations

from pathlib import Path

from seqrec.config import ConfigError, RunConfig


def _features_cached(cfg: RunConfig) -> bool:
    folder = Path(cfg.train.features_dir or Path(cfg.train.output_dir) / "features")
    return (folder / "manifest.json").is_file()


def preflight(cfg: RunConfig) -> None:
    tc = cfg.train
    if cfg.data_dir:
        data = Path(cfg.data_dir)
        if not data.is_dir():
            raise ConfigError(f"data_dir {data} does not exist (pass --data with a prepared data directory)")
        if not (data / "meta.json").is_file():  # PreparedData.load checks the rest
            raise ConfigError(
                f"data_dir {data} is not a prepared data directory (make one with `seqrec data prepare` "
                "or `seqrec data synth`)"
            )
    from transformers import SchedulerType

    names = [s.value for s in SchedulerType]
    if tc.scheduler not in names:
        raise ConfigError(f"train.scheduler={tc.scheduler!r} is not one of {names}")
    if tc.init_from and not (Path(tc.init_from) / "seqrec_model.json").is_file():
        raise ConfigError(
            f"train.init_from={tc.init_from!r} is not a seqrec model folder (no seqrec_model.json)"
        )
    if tc.model != "seqrec":
        return
    if tc.stage == "head" and not tc.init_from and _features_cached(cfg):
        return  # the cached features are all the head stage reads
    from seqrec.modeling.availability import check_backbone_available, offline_if_local

    check_backbone_available(cfg.model.backbone)
    offline_if_local(cfg.model.backbone)
