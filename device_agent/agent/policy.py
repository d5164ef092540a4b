"""Pure decisions: which bundle to take next, and whether a candidate passes the WER gate."""
from __future__ import annotations

from dataclasses import dataclass, field

from device_agent.channels import ChannelState, UpdateEdge, in_rollout, plan_update


@dataclass(frozen=True)
class GateConfig:
    max_wer: float  # absolute ceiling
    max_regression: float  # vs the current model on the same local data
    expected_slack: float | None  # vs the publisher's expected WER (None: ignore it)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # every rule that failed, or what passed


def gate_decision(candidate_wer: float, current_wer: float | None, expected_wer: float | None,
                  cfg: GateConfig) -> GateDecision:
    """All rules must hold; every failing rule is named (for the report)."""
    failed = []
    if candidate_wer > cfg.max_wer:
        failed.append(f"WER {candidate_wer:.4f} above the ceiling {cfg.max_wer:.4f}")
    if current_wer is not None and candidate_wer > current_wer + cfg.max_regression:
        failed.append(f"WER {candidate_wer:.4f} regresses on the current model's {current_wer:.4f} "
                      f"by more than {cfg.max_regression:.4f}")
    if expected_wer is not None and cfg.expected_slack is not None and candidate_wer > expected_wer + cfg.expected_slack:
        failed.append(f"WER {candidate_wer:.4f} above the publisher's expected {expected_wer:.4f} "
                      f"+ slack {cfg.expected_slack:.4f}")
    if failed:
        return GateDecision(False, failed)
    before = "none" if current_wer is None else f"{current_wer:.4f}"
    return GateDecision(True, [f"WER {candidate_wer:.4f} (current {before}) within the gate"])


@dataclass(frozen=True)
class Choice:
    edge: UpdateEdge | None  # the next bundle to install, or None
    reason: str  # why (logged and shown by `ota agent status`)
    plan: tuple[UpdateEdge, ...] = ()


def choose_update(channel: ChannelState, active_version: int | None, refused: set[int], device_id: str) -> Choice:
    """The first bundle of the cheapest plan from the active version to the channel's
    current version, unless the device is outside the rollout or refused that version.
    One bundle per attempt: each hop is verified, gated and committed on its own."""
    target = channel.current_version
    if active_version == target:
        return Choice(None, f"already at version {target}")
    if target in refused:
        return Choice(None, f"version {target} was refused earlier; not retried automatically")
    if not in_rollout(channel, device_id):
        return Choice(None, f"outside the {channel.rollout_percent:g}% rollout of version {target}")
    plan = plan_update(channel, active_version, target)  # NoUpdatePathError if none
    hop = plan[0]
    if hop.to_version in refused:
        return Choice(None, f"the plan passes through refused version {hop.to_version}")
    return Choice(hop, f"update {'none' if active_version is None else active_version} -> {target} via {len(plan)} bundle(s)", tuple(plan))


def parse_expected_wer(value: object) -> float | None:
    """TUF custom metadata carries WER as a string (canonical JSON has no floats)."""
    if value is None:
        return None
    try:
        wer = float(str(value))
    except ValueError:
        return None
    return wer if 0.0 <= wer < 100.0 else None
