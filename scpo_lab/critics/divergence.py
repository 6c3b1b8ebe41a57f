"""scpo-divergence (variant 2): the teacher-student disagreement as a dense, sparse or in-between reward.

For rollout i of group g and completion token t (c_i = the verifier's outcome and feedback on rollout i; both
log-probs from the current policy, no gradient through either):
    d_{i,t} = log pi(y_t | x, c_i, y_<t) - log pi(y_t | x, y_<t)                 signal = "log-ratio"
or, comparing the next-token distributions p = pi(. | x, y_<t) (student) and q = pi(. | x, c_i, y_<t)
(teacher) on the student's top_k tokens plus one tail bucket (top_k = 0: the full vocabulary), a penalty
on the positions where the outcome-aware teacher disagrees with the student:
    d_{i,t} = -KL(p || q)            signal = "reverse-kl"
    d_{i,t} = -KL(q || p)            signal = "forward-kl"
    d_{i,t} = -[a KL(p || m) + (1 - a) KL(q || m)],  m = a p + (1 - a) q      signal = "jsd" (a = jsd_alpha)
(the distribution signals need a second, student-context pass: about one more teacher pass of compute)
Two learned or relational extractors:
    signal = "pairwise-rank" (DPO-style): implicit reward R_i = rank_beta * sum_t log-ratio_{i,t}; within the
        group d_{i,t} = mean_{j != i} sigmoid(R_i - R_j) - 1/2 for every token of rollout i (a ranking reward)
    signal = "probe": a linear probe z = v . h + b on the teacher pass's hidden states h_{i,t} at depth
        probe_depth (0 = embeddings, 1 = last layer), trained online (Adam, probe_lr, one step per training
        step, after its signal is read) to predict the verifier outcome of rollout i from every token's state
        (binary cross-entropy); d_{i,t} = sigmoid(z_{i,t}) - sigmoid(z_{i,t-1}) (sigmoid(z_{i,-1}) = 1/2): where
        along the rollout the outcome-aware states shift the predicted success
Then:
    center = "group":  d_{i,t} <- d_{i,t} - mean_{j in g} dbar_j,  dbar_j = token mean of d over rollout j
                       (a group baseline: the signal moves credit between siblings instead of pulling every
                       token toward the teacher, which is reverse-KL distillation since E_student[d] = -KL <= 0)
    aggregation:       s_{i,t} = mean of d over the unit holding t: the token itself ("token"), a window of
                       `span_tokens` tokens ("span"), a line of the completion ("line"), the rollout ("sequence")
    clip:              s_{i,t} <- clip(s_{i,t}, -clip, +clip)
    grounding = "additive":  A_{i,t} = A_i + weight * s_{i,t}           (acts inside all-pass / all-fail groups)
    grounding = "rlsd":      A_{i,t} = A_i * exp(sign(A_i) * weight * s_{i,t})
                       the verifier sets the sign, the teacher the magnitude (RLSD-style); 0 when A_i = 0

A_i is the verifier's group advantage (GRPO), so with additive grounding the verifier keeps the sign of the
update wherever the group disagrees, and inside an all-pass or all-fail group (A_i = 0) the signal alone moves
the tokens the teacher, knowing the outcome, finds more (d > 0) or less (d < 0) likely than the student did.
RLSD grounding never acts where A_i = 0: it reweights tokens, it cannot rescue a collapsed group. Clipping keeps
a few tokens from dominating (OPSD reports style tokens with 6-15x the average divergence).
The critic's own score of rollout i (hack/*) and its sequence-level reward are dbar_i, before centring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scpo_lab import checks
from scpo_lab.critics.base import Critic, CriticResult, outcome_bce, signal_stats
from scpo_lab.objective import divergence, with_tail
from scpo_lab.teacher import student_messages, teacher_pass

CENTERS = ("none", "group")
AGGREGATIONS = ("token", "span", "line", "sequence")
GROUNDINGS = ("additive", "rlsd")
SIGNALS = ("log-ratio", "reverse-kl", "forward-kl", "jsd", "pairwise-rank", "probe")


@dataclass
class ScpoConfig(checks.Section):
    """Options of scpo-divergence (`scpo.*`); the formulas are the module docstring's."""

    name = "scpo"
    weight: float = 0.5  # w in A_i + w s_{i,t}
    clip: float = 2.0
    center: str = "none"  # none | group
    aggregation: str = "token"  # token | span | line | sequence
    span_tokens: int = 8  # window length for aggregation = "span"
    grounding: str = "additive"  # additive | rlsd
    signal: str = "log-ratio"  # log-ratio | reverse-kl | forward-kl | jsd | pairwise-rank | probe
    top_k: int = 100  # support of the distribution signals: student's top-k + tail; 0 = full vocabulary
    jsd_alpha: float = 0.5  # a in the generalized JSD
    rank_beta: float = 1.0  # beta of the implicit reward, signal = "pairwise-rank"
    probe_depth: float = 0.5  # which hidden layer the probe reads, as a fraction of the depth
    probe_lr: float = 1e-3

    def check(self) -> None:
        f = self.field_name
        checks.positive(f("weight"), self.weight, allow_zero=True)
        checks.positive(f("clip"), self.clip)
        checks.one_of(f("center"), self.center, CENTERS)
        checks.one_of(f("aggregation"), self.aggregation, AGGREGATIONS)
        checks.positive_int(f("span_tokens"), self.span_tokens)
        checks.one_of(f("grounding"), self.grounding, GROUNDINGS)
        checks.one_of(f("signal"), self.signal, SIGNALS)
        checks.count(f("top_k"), self.top_k, "0 = full vocabulary")
        if not isinstance(self.jsd_alpha, (int, float)) or not 0 < self.jsd_alpha < 1:
            raise checks.ConfigError(f"{f('jsd_alpha')}: got {self.jsd_alpha!r}; must be in (0, 1)")
        checks.positive(f("rank_beta"), self.rank_beta)
        checks.positive(f("probe_lr"), self.probe_lr)
        if not isinstance(self.probe_depth, (int, float)) or not 0 <= self.probe_depth <= 1:
            raise checks.ConfigError(f"{f('probe_depth')}: got {self.probe_depth!r}; must be in [0, 1]")


class DivergenceCritic(Critic):
    methods = ("scpo-divergence",)
    Config = ScpoConfig
    # the supervision-level arms of notebook 01: the same group-centred log-ratio, averaged over a growing unit
    presets = {"scpo-token": {"method": "scpo-divergence", "scpo.center": "group", "scpo.aggregation": "token"},
               "scpo-span": {"method": "scpo-divergence", "scpo.center": "group", "scpo.aggregation": "span",
                             "scpo.span_tokens": 8},
               "scpo-sequence": {"method": "scpo-divergence", "scpo.center": "group",
                                 "scpo.aggregation": "sequence"}}
    reads_sampler_logprobs = True
    sequence_level = True
    DISTRIBUTION_SIGNALS = ("reverse-kl", "forward-kl", "jsd")

    def __init__(self, config, tokenizer=None, world=None):
        super().__init__(config, tokenizer, world)
        self.probe: torch.nn.Linear | None = None  # signal = "probe": built on first use (needs the hidden size)
        self.probe_optimizer = None
        self._pending_probe_state = None

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        cfg = self.config.scpo
        if cfg.signal == "probe":
            layers = policy.model.config.num_hidden_layers  # peft forwards .config to the base model
            return teacher_pass(policy, batch, batch.verdicts, temperature=temperature,
                                micro_batch_size=micro_batch_size, hidden_layer=round(cfg.probe_depth * layers),
                                engine=self.config.rollout_engine)
        if cfg.signal not in self.DISTRIBUTION_SIGNALS:
            return super().teacher_pass(policy, batch, temperature=temperature, micro_batch_size=micro_batch_size)
        # distributions: the student's top-k (its own context), then the teacher's log-probs on those tokens
        k = cfg.top_k or len(policy.tokenizer)
        kwargs = dict(temperature=temperature, micro_batch_size=micro_batch_size, engine=self.config.rollout_engine)
        student = teacher_pass(policy, batch, batch.verdicts, context=student_messages, top_k=k, **kwargs)
        teacher = teacher_pass(policy, batch, batch.verdicts, support_ids=student.dist_ids, **kwargs)
        teacher.student = student
        teacher.tokens_read += student.tokens_read
        return teacher

    def signal(self, batch, teacher) -> torch.Tensor:
        """d_{i,t} before centring, [B, T] (unmasked)."""
        cfg = self.config.scpo
        if cfg.signal == "log-ratio":
            return teacher.logprobs - batch.logprobs
        if cfg.signal == "pairwise-rank":
            return pairwise_rank_reward(teacher.logprobs - batch.logprobs, batch.completion_mask, batch.group_size,
                                        cfg.rank_beta)[:, None].expand_as(teacher.logprobs)
        if cfg.signal == "probe":
            return self.probe_signal(batch, teacher)
        if teacher.student is None:
            raise ValueError(f"scpo.signal: {cfg.signal!r} needs the distributions of DivergenceCritic.teacher_pass")
        return -divergence(with_tail(teacher.student.dist_logprobs), with_tail(teacher.dist_logprobs), cfg.signal,
                           cfg.jsd_alpha)

    def advantages(self, batch, group_advantages, teacher, step: int = 0) -> CriticResult:
        cfg = self.config.scpo
        mask = batch.completion_mask.float()
        n_tokens = mask.sum(1).clamp(min=1)
        log_ratio = (teacher.logprobs - batch.logprobs) * mask  # sampled-token log-ratio, logged for every signal
        d = self.signal(batch, teacher) * mask  # d_{i,t}
        # the critic's own judgment of each rollout before centring (hack/*), and its sequence-level reward
        seq_mean = d.sum(1) / n_tokens  # dbar_i
        if cfg.center == "group":
            baseline = seq_mean.view(-1, batch.group_size).mean(1).repeat_interleave(batch.group_size)
            d = (d - baseline[:, None]) * mask
        units = self.unit_ids(batch, cfg.aggregation, cfg.span_tokens)
        unit_mean = span_mean(d, mask, units)
        s = unit_mean.clamp(-cfg.clip, cfg.clip) * mask  # s_{i,t}
        a = group_advantages[:, None]
        if cfg.grounding == "additive":
            advantages = (a + cfg.weight * s) * mask  # A_{i,t} = A_i + w s_{i,t}
        else:
            advantages = a * torch.exp(torch.sign(a) * cfg.weight * s) * mask  # A_i exp(sign(A_i) w s_{i,t})
        n = mask.sum().clamp(min=1)
        passed = torch.tensor([v.passed for v in batch.verdicts], dtype=torch.bool)
        seq_ratio = log_ratio.sum(1) / n_tokens
        stats = {
            "scpo/log_ratio_mean": float(log_ratio.sum() / n),
            "scpo/log_ratio_abs_mean": float(log_ratio.abs().sum() / n),
            "scpo/clipped_frac": float(((unit_mean.abs() > cfg.clip) & (mask > 0)).sum() / n),
            "scpo/log_ratio_passed": float(seq_ratio[passed].mean()) if passed.any() else float("nan"),
            "scpo/log_ratio_failed": float(seq_ratio[~passed].mean()) if (~passed).any() else float("nan"),
            **signal_stats(advantages, mask, group_advantages, batch.group_size, passed),
            **({"scpo/probe_loss": self.last_probe_loss} if cfg.signal == "probe" else {}),
        }
        return CriticResult(advantages, stats, score=seq_mean, sequence_reward=seq_mean)

    def probe_signal(self, batch, teacher) -> torch.Tensor:
        """d_{i,t} = sigmoid(z_{i,t}) - sigmoid(z_{i,t-1}) from the probe as it stands, then one training step of
        the probe on this batch (label: the verifier outcome of the rollout, on every completion token)."""
        if teacher.hidden is None:
            raise ValueError("scpo.signal: 'probe' needs the hidden states of DivergenceCritic.teacher_pass")
        h = teacher.hidden.detach()
        if self.probe is None:
            self.probe = torch.nn.Linear(h.shape[-1], 1)
            torch.nn.init.zeros_(self.probe.weight)  # starts at p = 1/2 everywhere: no signal before it learns
            torch.nn.init.zeros_(self.probe.bias)
            self.probe_optimizer = torch.optim.Adam(self.probe.parameters(), lr=self.config.scpo.probe_lr)
            if self._pending_probe_state is not None:
                self._load_probe(self._pending_probe_state)
        mask = batch.completion_mask.float()
        # one forward: its values give the signal, its graph the update; fp32 even where autocast ran it in bf16
        logits = self.probe(h.float()).float().squeeze(-1)
        p = torch.sigmoid(logits.detach())  # predicted success after each token
        previous = torch.cat([torch.full_like(p[:, :1], 0.5), p[:, :-1]], dim=1)
        signal = (p - previous) * mask
        n_tokens = self.world.sum(float(mask.sum()))  # several processes: the whole batch's token count
        loss = outcome_bce(logits, torch.tensor([bool(v.passed) for v in batch.verdicts]), mask, n_tokens)
        self.probe_optimizer.zero_grad()
        loss.backward()
        self.world.sum_gradients(list(self.probe.parameters()))  # the whole batch's gradient on every process
        self.probe_optimizer.step()
        self.last_probe_loss = self.world.sum(float(loss.detach()))
        self.own_flops = 6.0 * sum(p.numel() for p in self.probe.parameters()) * float(mask.sum())  # its step
        return signal

    def state_dict(self) -> dict:
        if self.probe is None:
            return {}
        return {"probe": self.probe.state_dict(), "probe_optimizer": self.probe_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "probe" in state:
            self._pending_probe_state = state  # applied when the probe is built (its size comes from the model)

    def _load_probe(self, state: dict) -> None:
        self.probe.load_state_dict(state["probe"])
        self.probe_optimizer.load_state_dict(state["probe_optimizer"])

    def unit_ids(self, batch, aggregation: str, span_tokens: int) -> torch.Tensor:
        """[B, T] index of the aggregation unit each completion token belongs to (units never cross rows)."""
        B, T = batch.completion_mask.shape
        t = torch.arange(T).expand(B, T)
        if aggregation == "token":
            return t
        if aggregation == "span":
            return t // span_tokens
        if aggregation == "sequence":
            return torch.zeros(B, T, dtype=torch.long)
        ends = self.line_end_table()[batch.completion_ids]  # token contains a newline: its line ends there
        return torch.cumsum(ends.long(), 1) - ends.long()  # a line = tokens up to and including its newline

    def line_end_table(self) -> torch.Tensor:
        """[V] bool: the token's text contains a newline. Built once from the tokenizer."""
        if getattr(self, "_line_ends", None) is None:
            if self.tokenizer is None:
                raise ValueError("scpo.aggregation: 'line' needs the tokenizer; build the critic with make_critic("
                                 "method, config, tokenizer)")
            vocab = len(self.tokenizer)
            self._line_ends = torch.tensor(["\n" in self.tokenizer.decode([i]) for i in range(vocab)])
        return self._line_ends


def pairwise_rank_reward(log_ratio: torch.Tensor, mask: torch.Tensor, group_size: int, beta: float) -> torch.Tensor:
    """DPO-style ranking within each group: R_i = beta * sum_t log-ratio_{i,t} (the implicit reward), then
    r_i = mean_{j != i} sigmoid(R_i - R_j) - 1/2, the Bradley-Terry chance of beating a sibling, centred. [B]"""
    implicit = beta * (log_ratio * mask).sum(1)  # R_i
    groups = implicit.view(-1, group_size)
    wins = torch.sigmoid(groups[:, :, None] - groups[:, None, :])  # P(i beats j)
    off_diagonal = 1 - torch.eye(group_size)
    return ((wins * off_diagonal).sum(-1) / max(1, group_size - 1) - 0.5).reshape(-1)


def span_mean(values: torch.Tensor, mask: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Each masked-in entry replaced by the mean of the masked-in entries of its row that share its unit id."""
    B, T = values.shape
    n_units = int(units.max()) + 1 if units.numel() else 1
    sums = torch.zeros(B, n_units, dtype=values.dtype).scatter_add_(1, units, values * mask)
    counts = torch.zeros(B, n_units, dtype=values.dtype).scatter_add_(1, units, mask)
    return (sums / counts.clamp(min=1)).gather(1, units) * mask
