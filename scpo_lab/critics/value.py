"""Self-critics that add parameters: a reward head on the policy (V1, `scpo-head`) and an online critic
(V4, `scpo-critic`); options `value.*`.

scpo-head: a head V(h) = sigmoid(head(h)) on the policy's final hidden states h, trained online by binary
cross-entropy against the verifier outcome of the rollout, at every completion state of two passes:
the update's own forward (student context: an on-policy value V(s_t)) and the self-teacher pass (privileged
context in front of the re-read rollout: its hindsight version). Reward, from the teacher-context values:
    reward = "shaping":  r_t = gamma * Phi_t - Phi_{t-1},  Phi_t = V(state after token t) for 1 <= t < T,
                         Phi_0 = Phi_T = 1/2 (the uninformed prior at the start and the terminal state), so
                         sum_t gamma^(t-1) r_t = (gamma^T - 1) / 2 whatever the values (0 for gamma = 1)
                         A_{i,t} = A_i + weight * r_{i,t}
                         What this is, exactly: a per-token credit term, not potential-based shaping in Ng et
                         al.'s (1999) sense, so their policy-invariance guarantee does not apply. (1) Phi is read in
                         the privileged context: it depends on the verdict, i.e. on the future. (2) r_t enters each
                         token's advantage directly, not through a return-to-go; with returns-to-go and gamma = 1 the
                         shaped term would be Phi_T - Phi_{t-1}, a (hindsight) baseline. The effect: a rollout's
                         terms sum to 0 (gamma = 1) and move credit to the tokens where the verdict-aware head's
                         predicted success rises (r_t > 0) or falls (r_t < 0). A head confident from the first
                         token (V = 0.95 everywhere for a pass) gives r = [+0.45, 0, ..., 0, -0.45]: credit to the
                         first token, blame to the last (tests/test_value_critics.py pins this).
    reward = "score":    r_i <- r_i + weight * V(state after the last token); A_i group-relative again
train_lora: the head's student-context loss (x head_loss_coef) also reaches the LoRA weights (else detached).

scpo-critic: a value model V(s_t) (value head on a backbone with its own LoRA adapter) updated every step:
    critic = "shared":   a second LoRA adapter on the policy's own base weights (one model in memory; the
                         trainer switches adapters around the critic's forward)
    critic = "separate": another model (critic_model; same tokenizer as the policy) with its own adapter
    asymmetric:          the critic reads the privileged context (question + verifier's note), the actor not.
                         Its baseline then reads the verdict, so GAE is biased: a perfect hindsight critic
                         (V_t = R for every t) gives GAE = 0 everywhere (gamma = lambda = 1), the policy gradient
                         of the GAE part vanishes exactly where the critic is best (tests/test_value_critics.py)
    GAE, verifier reward R at the last token:  delta_t = gamma V_{t+1} - V_t (+ R at t = T, V_{T+1} = 0),
                         A^GAE_t = sum_l (gamma lambda)^l delta_{t+l}
    A_{i,t} = group_mix * A_i + (1 - group_mix) * A^GAE_{i,t}
    loss = 1/2 max((V - G)^2, (V_old + clip(V - V_old, +-value_clip) - G)^2), G = A^GAE + V_old clipped to
           [0, 1] (the range of the verifier's reward); its own AdamW (lr), critic_epochs passes per step;
           for the first warmup_steps steps only the critic trains (the actor waits for a useful baseline)

Several processes: each critic's losses are divided by the whole batch's token count and its gradients summed
over the processes before its optimizer step (as the policy's), so its parameters stay identical everywhere.

Indexing used throughout: for a completion y_1..y_T, s_t is the state in which y_{t+1} is chosen (it has read
the context and y_1..y_t); `states[:, t]` [B, T, H] holds s_0..s_{T-1}, the final hidden states that predict
each completion token (objective.completion_states, TeacherOutput.states).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from scpo_lab import checks
from scpo_lab.critics.base import Critic, CriticResult, LossTerm, UpdateForward, outcome_bce, signal_stats
from scpo_lab.objective import completion_states, critic_advantages
from scpo_lab.rollout import encode_prompts, micro_batches
from scpo_lab.stats import auroc
from scpo_lab.teacher import privileged_messages, student_messages, teacher_pass

CRITIC_ADAPTER = "critic"  # name of the critic's LoRA adapter on the policy's base weights (critic = "shared")
HEADS = ("linear", "mlp")
HEAD_REWARDS = ("shaping", "score")
BACKBONES = ("shared", "separate")


@dataclass
class ValueConfig(checks.Section):
    """Options of scpo-head and scpo-critic (`value.*`); the formulas are the module docstring's."""

    name = "value"
    head: str = "linear"  # linear | mlp
    head_hidden: int = 64  # width of the mlp head
    lr: float = 1e-3  # the head's (scpo-head) or the critic's (head + adapter, scpo-critic) learning rate
    reward: str = "shaping"  # shaping | score (scpo-head)
    weight: float = 0.5
    gamma: float = 1.0
    gae_lambda: float = 0.95
    train_lora: bool = False  # scpo-head: head loss gradient reaches the policy's LoRA weights
    head_loss_coef: float = 0.1  # scpo-head with train_lora: weight of the head loss in the policy's loss
    critic: str = "shared"  # shared | separate (scpo-critic)
    critic_model: str = "embedded"  # critic = separate: any loadable model with the policy's tokenizer
    critic_lora_r: int = 16
    asymmetric: bool = False
    group_mix: float = 0.5
    value_clip: float = 0.2
    critic_epochs: int = 1
    warmup_steps: int = 0

    def check(self) -> None:
        f = self.field_name
        checks.one_of(f("head"), self.head, HEADS)
        checks.positive_int(f("head_hidden"), self.head_hidden)
        checks.positive(f("lr"), self.lr)
        checks.one_of(f("reward"), self.reward, HEAD_REWARDS)
        checks.positive(f("weight"), self.weight, allow_zero=True)
        for name in ("gamma", "gae_lambda", "group_mix"):
            checks.unit_interval(f(name), getattr(self, name))
        for name in ("train_lora", "asymmetric"):
            checks.boolean(f(name), getattr(self, name))
        checks.positive(f("head_loss_coef"), self.head_loss_coef, allow_zero=True)
        checks.one_of(f("critic"), self.critic, BACKBONES)
        if not isinstance(self.critic_model, str) or checks.is_missing_model_path(self.critic_model):
            raise checks.ConfigError(f"{f('critic_model')}: got {self.critic_model!r}; use 'embedded', 'tiny', a "
                                     "local model folder or a hub id")
        checks.positive_int(f("critic_lora_r"), self.critic_lora_r)
        checks.positive(f("value_clip"), self.value_clip)
        checks.positive_int(f("critic_epochs"), self.critic_epochs)
        checks.count(f("warmup_steps"), self.warmup_steps)


class ValueHead(torch.nn.Module):
    """h [.., H] -> one logit [..]: linear, or a 2-layer MLP (tanh). The last layer starts at zero, so the head
    predicts sigmoid(0) = 1/2 (scpo-head) or 0 (scpo-critic) everywhere before it learns: no signal at step 1."""

    def __init__(self, hidden_size: int, kind: str = "linear", width: int = 64):
        super().__init__()
        if kind == "mlp":
            self.net = torch.nn.Sequential(torch.nn.Linear(hidden_size, width), torch.nn.Tanh(),
                                           torch.nn.Linear(width, 1))
        else:
            self.net = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.net[-1].weight if kind == "mlp" else self.net.weight)
        torch.nn.init.zeros_(self.net[-1].bias if kind == "mlp" else self.net.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # .float(): under bf16 autocast the Linear's product is bf16; the logit that rewards and losses use is fp32
        return self.net(h.float()).float().squeeze(-1)


# ------------------------------------------------------------------------------------------------ the math

def shaping_rewards(values: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Potential-based shaping per completion token, [B, T].

    values[:, t] = V(s_t) for the states s_0..s_{T-1}; potentials Phi_t = V(s_t) for 1 <= t < T_i and
    Phi_0 = Phi_{T_i} = 1/2 (prior and terminal), so that
        r_t = gamma * Phi_t - Phi_{t-1}    (t = 1..T_i, stored at column t-1: the reward of choosing y_t)
    and sum_t gamma^(t-1) r_t = (gamma^T_i - 1) / 2: it does not depend on the values (it telescopes).
    """
    mask = mask.float()
    lengths = mask.sum(1).long()
    phi = values.detach().float().clone()  # phi[:, t] = Phi_t for t >= 1; column 0 replaced by the prior
    after = torch.cat([phi[:, 1:], torch.zeros_like(phi[:, :1])], dim=1)  # Phi_{t} for the token at column t-1
    last = (torch.arange(phi.shape[1])[None, :] == (lengths - 1).clamp(min=0)[:, None])
    after = torch.where(last, torch.full_like(after, 0.5), after)  # Phi_T: the terminal state's potential
    before = torch.cat([torch.full_like(phi[:, :1], 0.5), phi[:, 1:]], dim=1)  # Phi_{t-1}
    return (gamma * after - before) * mask


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation with the verifier's reward at the last token, -> (advantages, returns),
    both [B, T]. values[:, t] = V(s_t); V after the last token = 0 (terminal);
        delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma lambda A_{t+1},   G_t = A_t + V(s_t)."""
    mask = mask.float()
    B, T = values.shape
    lengths = mask.sum(1).long()
    advantages = torch.zeros(B, T)
    running = torch.zeros(B)
    for t in reversed(range(T)):
        inside = t < lengths  # rows whose completion reaches token t
        is_last = t == lengths - 1
        next_value = torch.where(is_last | ~inside, torch.zeros(B), values[:, t + 1] if t + 1 < T else torch.zeros(B))
        reward = torch.where(is_last, rewards.float(), torch.zeros(B))
        delta = reward + gamma * next_value - values[:, t]
        running = torch.where(inside, delta + gamma * lam * torch.where(is_last, torch.zeros(B), running),
                              torch.zeros(B))
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def clipped_value_loss(values, old_values, returns, mask, clip: float) -> torch.Tensor:
    """PPO's value loss, token mean: 1/2 max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target) over the masked entries (nan when the target is constant)."""
    m = mask.bool()
    y, p = target[m].double(), predicted[m].double()
    var = float(y.var()) if len(y) > 1 else 0.0
    return 1.0 - float((y - p).var()) / var if var > 0 else float("nan")


def _at_last_state(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values[i, T_i - 1]: the state that has read all of rollout i but its final token."""
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return values.gather(1, last[:, None]).squeeze(1)


def _check_finite(name: str, value: torch.Tensor) -> None:
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"{name} is not finite; the run stops and its last checkpoint is kept — lower "
                                 "value.lr or check the inputs")


def _passed(batch) -> torch.Tensor:
    return torch.tensor([bool(v.passed) for v in batch.verdicts])


# ------------------------------------------------------------------------------------------------ V1: reward head

class HeadLoss(LossTerm):
    """The head's BCE on the update's own (student-context) states of each micro-batch, weighted by its token
    share; with value.train_lora the gradient also reaches the LoRA weights (x head_loss_coef), else only the
    head's (it trains the head, not the policy: not part of the logged `loss`)."""

    name = "head/loss_student"
    policy_objective = False
    wants_states = True

    def __init__(self, critic: "HeadCritic", passed: torch.Tensor):
        self.critic, self.passed = critic, passed

    def __call__(self, forward: UpdateForward, rows, mask, n_tokens):
        critic, cfg = self.critic, self.critic.config.value
        passed = self.passed[rows]
        logits = critic.head(forward.states if cfg.train_lora else forward.states.detach())
        loss = outcome_bce(logits, passed, mask.float()) * float(mask.sum()) / max(n_tokens, 1.0)
        _check_finite("value head loss (student context)", loss)
        values = torch.sigmoid(logits.detach()) * mask
        means = values.sum(1) / mask.sum(1).clamp(min=1)
        indices = range(len(self.passed))[rows]  # rows: the micro-batch's slice of the batch (rollout.micro_batches)
        for i, mean, outcome in zip(indices, means.tolist(), passed.tolist()):  # the first pass's, once a rollout
            critic._student_rows.setdefault(i, (mean, outcome))
        loss = loss * (cfg.head_loss_coef if cfg.train_lora else 1.0)
        return loss, float(loss.detach())


class HeadCritic(Critic):
    """scpo-head: a value head on the policy's own final hidden states (no second model).

    Each step: the teacher pass (privileged context) returns the states s_t; the head's values there give the
    reward (shaping or final score); the head then takes one AdamW step on the BCE of both passes -- the
    teacher-context states (here) and the student-context states of the update's own forward (its HeadLoss,
    on every micro-batch) -- after the actor's update (`after_update`)."""

    methods = ("scpo-head",)
    Config = ValueConfig
    presets = {"scpo-head": {"method": "scpo-head"}}
    sequence_level = True  # with value.reward = "score" (check_sequence_level)

    @classmethod
    def check_sequence_level(cls, config) -> None:
        if config.value.reward != "score":
            raise ValueError("value.reward: scpo-head as a TRL reward needs 'score' (V after the rollout)")

    def __init__(self, config, tokenizer=None, world=None):
        super().__init__(config, tokenizer, world)
        self.head: ValueHead | None = None
        self.optimizer = None
        self._pending_state = None
        self._student_rows: dict = {}  # rollout -> (mean student-context value, passed) of this step's update

    def _build(self, hidden_size: int) -> None:
        cfg = self.config.value
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.head = ValueHead(hidden_size, cfg.head, cfg.head_hidden)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr, weight_decay=0.0)
        if self._pending_state is not None:
            self.head.load_state_dict(self._pending_state["head"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        out = teacher_pass(policy, batch, batch.verdicts, temperature=temperature, micro_batch_size=micro_batch_size,
                           return_states=True, engine=self.config.rollout_engine)
        if self.head is None:
            self._build(out.states.shape[-1])
        with torch.no_grad():
            out.values = torch.sigmoid(self.head(out.states))  # V(s_t) as the pass read it (samples.jsonl)
        return out

    def parameters(self) -> list:
        return [] if self.head is None else list(self.head.parameters())

    def advantages(self, batch, group_advantages_, teacher, step: int = 0) -> CriticResult:
        cfg = self.config.value
        mask = batch.completion_mask.float()
        passed = _passed(batch)
        logits = self.head(teacher.states.detach())  # [B, T]: one forward, its values the reward, its graph the loss
        values = torch.sigmoid(logits.detach())  # V(s_t) under the privileged context: hindsight
        final = _at_last_state(values, mask)  # V after reading y_<T: the head's own judgment of each rollout
        if cfg.reward == "shaping":
            r = shaping_rewards(values, mask, cfg.gamma)
            advantages = (group_advantages_[:, None] + cfg.weight * r) * mask  # A_{i,t} = A_i + w r_{i,t}
        else:  # A'_i = A_i + w (V_T,i - mean_g V_T) / CRITIC_SCALE (objective.critic_advantages)
            advantages = critic_advantages(group_advantages_, final, batch.group_size, cfg.weight)
        loss = outcome_bce(logits, passed, mask, self.world.sum(float(mask.sum())))
        _check_finite("value head loss (teacher context)", loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # head gradients only (the states carry none); the step comes after the actor's update
        stats = {"head/loss_teacher": self.world.sum(float(loss.detach())), "head/auroc_teacher": auroc(final, passed),
                 "head/value_mean": float((values * mask).sum() / mask.sum().clamp(min=1)),
                 **signal_stats(advantages, mask, group_advantages_, batch.group_size, passed)}
        # the head's forward + backward on the teacher's and the update's states, 6 N per state each
        self.own_flops = 6.0 * self.extra_parameters() * 2 * float(mask.sum())
        return CriticResult(advantages, stats, score=final, score_is_probability=True, sequence_reward=final,
                            loss_term=HeadLoss(self, passed))

    def after_update(self, policy) -> dict:
        if self.head is None:
            return {}
        self.world.sum_gradients(self.parameters())  # several processes: the whole batch's gradient everywhere
        for p in self.head.parameters():
            if p.grad is not None:
                _check_finite("value head gradient", p.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        rows, self._student_rows = list(self._student_rows.values()), {}
        # this step's row is assembled after after_update: the update's own AUROC lands in its own step (it was
        # logged a step late, and lost on resume)
        return {"head/auroc_student": auroc([r[0] for r in rows], [r[1] for r in rows])} if rows else {}

    @torch.no_grad()
    def predict_success(self, policy, batch, micro_batch_size: int = 16) -> torch.Tensor:
        """P(the verifier passes rollout i) as the head predicts it from the student's context (no verdict), at the
        last state it reads before the final token, [B] -- what a calibration plot compares with the outcome."""
        out = teacher_pass(policy, batch, batch.verdicts, context=student_messages, micro_batch_size=micro_batch_size,
                           return_states=True, engine=self.config.rollout_engine)
        if self.head is None:
            self._build(out.states.shape[-1])
        return _at_last_state(torch.sigmoid(self.head(out.states)), batch.completion_mask)

    def state_dict(self) -> dict:
        return {} if self.head is None else {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "head" in state:
            self._pending_state = state  # applied when the head is built (its size comes from the model)

    def extra_parameters(self) -> int:
        return 0 if self.head is None else sum(p.numel() for p in self.head.parameters())


# ------------------------------------------------------------------------------------------------ V4: online critic

class OnlineCritic(Critic):
    """scpo-critic: a value model V(s_t) trained on the fly; advantages by GAE mixed with the group-relative one.

    Each step: (1) the value model reads the batch (no gradient; engine-fast) -> V_old; (2) advantages; (3) after
    the actor's update, critic_epochs passes of the clipped value loss on G = A^GAE + V_old, with gradient through
    the critic's adapter and head. The critic's context is the student's, or the privileged one (asymmetric)."""

    methods = ("scpo-critic",)
    Config = ValueConfig
    presets = {"scpo-critic-shared": {"method": "scpo-critic", "value.critic": "shared"},
               # a second copy of the embedded model (the only local model); the smoke profile uses the tiny one
               "scpo-critic-separate": {"method": "scpo-critic", "value.critic": "separate",
                                        "value.critic_model": "embedded"}}

    def __init__(self, config, tokenizer=None, world=None):
        super().__init__(config, tokenizer, world)
        self.head: ValueHead | None = None
        self.optimizer = None
        self.separate = None  # critic = "separate": the critic's own Policy
        self._adapter: list[tuple[str, torch.nn.Parameter]] = []  # the critic's LoRA parameters, by name
        self._pending_state = None
        self._pending = None  # what the critic update after the actor's needs: (batch, old values, returns)
        self.step = 0

    # the value model --------------------------------------------------------------------------------------------
    def _build(self, policy) -> None:
        from peft import LoraConfig as PeftLoraConfig

        from scpo_lab.models import LoraConfig, load_policy

        cfg = self.config.value
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 1)
            if cfg.critic == "separate":
                self.separate = load_policy(cfg.critic_model, backend="hf", seed=self.config.seed + 1,
                                            lora=LoraConfig(r=cfg.critic_lora_r, alpha=2 * cfg.critic_lora_r))
                if len(self.separate.tokenizer) != len(policy.tokenizer) or \
                        self.separate.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
                    raise ValueError(f"value.critic_model: {cfg.critic_model!r} has another tokenizer than the "
                                     "policy; allowed: a model with the policy's tokenizer, or value.critic 'shared'")
                model = self.separate.model
            else:
                if not hasattr(policy.model, "add_adapter"):
                    raise ValueError("value.critic: 'shared' needs a peft policy (add_adapter); allowed: 'separate'")
                model = policy.model
                if CRITIC_ADAPTER in model.peft_config:  # a policy reused across runs: a fresh critic adapter
                    if model.peft_config[CRITIC_ADAPTER].r != cfg.critic_lora_r:
                        raise ValueError(f"value.critic_lora_r: this policy already holds a critic adapter of rank "
                                         f"{model.peft_config[CRITIC_ADAPTER].r}; load a fresh policy for rank "
                                         f"{cfg.critic_lora_r}")
                    for module in model.modules():
                        if hasattr(module, "reset_lora_parameters") and CRITIC_ADAPTER in getattr(module, "lora_A", {}):
                            module.reset_lora_parameters(CRITIC_ADAPTER, True)
                else:
                    model.add_adapter(CRITIC_ADAPTER, PeftLoraConfig(
                        r=cfg.critic_lora_r, lora_alpha=2 * cfg.critic_lora_r, lora_dropout=0.0,
                        target_modules=list(model.peft_config["default"].target_modules)))
                for _, param in self._named_adapter(model, f".{CRITIC_ADAPTER}."):
                    param.requires_grad_(False)  # trainable only while switched in (value_model), never by the actor
            hidden = model.config.hidden_size
            self.head = ValueHead(hidden, cfg.head, cfg.head_hidden)
        self._adapter = self._named_adapter(model, "lora_" if self.separate is not None else f".{CRITIC_ADAPTER}.")
        params = list(self.head.parameters()) + [p for _, p in self._adapter]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        if self._pending_state is not None:
            self._load(policy, self._pending_state)
            self._pending_state = None

    @staticmethod
    def _named_adapter(model, marker: str) -> list:
        return [(n, p) for n, p in model.named_parameters() if marker in n]

    @contextlib.contextmanager
    def value_model(self, policy):
        """The critic's Policy with its adapter active; for "shared" the policy's own model with the critic's
        adapter switched in, and the policy's adapter (and its requires_grad flags) restored afterwards."""
        if self.separate is not None:
            yield self.separate
            return
        model = policy.model
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        active = model.active_adapter
        model.set_adapter(CRITIC_ADAPTER)
        try:
            yield policy
        finally:
            model.set_adapter(active)
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])

    def _context(self):
        return privileged_messages if self.config.value.asymmetric else student_messages

    # the hooks ----------------------------------------------------------------------------------------------------
    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        if self.head is None:
            self._build(policy)
        with self.value_model(policy) as critic:
            out = teacher_pass(critic, batch, batch.verdicts, temperature=temperature, context=self._context(),
                               micro_batch_size=micro_batch_size, return_states=True,
                               engine=self.config.rollout_engine)
        with torch.no_grad():
            out.values = self.head(out.states) * batch.completion_mask  # V_old(s_t)
        out.logprobs = None  # the critic's context is not the policy's: no teacher-student log-ratio to report
        return out

    def parameters(self) -> list:
        return [] if self.head is None else list(self.head.parameters()) + [p for _, p in self._adapter]

    def advantages(self, batch, group_advantages_, teacher, step: int = 0) -> CriticResult:
        cfg = self.config.value
        mask = batch.completion_mask.float()
        rewards = torch.tensor([v.reward for v in batch.verdicts], dtype=torch.float32)
        values = teacher.values
        _check_finite("critic values", values)
        gae_adv, returns = gae(values, rewards, mask, cfg.gamma, cfg.gae_lambda)
        advantages = (cfg.group_mix * group_advantages_[:, None] + (1 - cfg.group_mix) * gae_adv) * mask
        self._pending = (batch, values, returns.clamp(0.0, 1.0) * mask)  # value targets clipped to the reward range
        n = mask.sum().clamp(min=1)
        mean_value = (values * mask).sum(1) / mask.sum(1).clamp(min=1)  # its own judgment of each rollout
        stats = {"critic/value_mean": float((values * mask).sum() / n),
                 "critic/explained_variance": explained_variance(values, returns, mask),
                 "critic/auroc": auroc(mean_value, _passed(batch)),
                 "critic/warmup": float(not self.updates_actor()),
                 **signal_stats(advantages, mask, group_advantages_, batch.group_size, _passed(batch))}
        return CriticResult(advantages, stats, score=mean_value)

    def updates_actor(self) -> bool:
        return self.step >= self.config.value.warmup_steps

    @torch.no_grad()
    def predict_success(self, policy, batch, micro_batch_size: int = 16) -> torch.Tensor:
        """The critic's V at the last state before the final token, clipped to [0, 1] (the verifier's reward
        range), [B]; in the critic's own context (privileged when asymmetric)."""
        out = self.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=micro_batch_size)
        return _at_last_state(out.values, batch.completion_mask).clamp(0.0, 1.0)

    def after_update(self, policy) -> dict:
        """critic_epochs passes of the clipped value loss over the batch, micro-batched, one step each."""
        cfg = self.config.value
        batch, old_values, returns = self._pending
        self._pending = None
        self.step += 1
        prompt = None  # the batch's own prompts, shared by each group; asymmetric: each row's privileged context
        if cfg.asymmetric:
            prompt = encode_prompts(policy.tokenizer, [privileged_messages(p.prompt, v)
                                                       for p, v in zip(batch.problems, batch.verdicts)], policy.device)
        micro = list(micro_batches(batch, self.config.micro_batch_size, *(prompt or ())))
        losses = []
        with self.value_model(policy) as critic:
            was_training = critic.model.training
            critic.model.train()
            mask = batch.completion_mask.float()
            n_tokens = max(self.world.sum(float(mask.sum())), 1.0)  # several processes: the whole batch's tokens
            for _ in range(cfg.critic_epochs):
                self.optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for rows, inputs in micro:
                    width = inputs[2].shape[1]
                    states, _ = completion_states(critic.model, *inputs,
                                                  group_size=1 if cfg.asymmetric else batch.group_size)
                    values = self.head(states)
                    m = inputs[3].float()
                    loss = clipped_value_loss(values, old_values[rows, :width], returns[rows, :width], m,
                                              cfg.value_clip) * float(m.sum()) / n_tokens
                    _check_finite("critic loss", loss.detach())
                    loss.backward()
                    total += float(loss.detach())
                self.world.sum_gradients(self.parameters())  # the whole batch's gradient on every process
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               self.config.max_grad_norm)
                self.optimizer.step()
                losses.append(self.world.sum(total))
            critic.model.train(was_training)
            # forward + backward of the value model, 6 N per token read, every epoch: the prompt once per group
            # (shared; each row's own privileged context when asymmetric) plus the completion
            prompt_mask = prompt[1] if prompt is not None else batch.prompt_mask
            prompt_tokens = float(prompt_mask.sum()) / (1 if cfg.asymmetric else batch.group_size)
            n_model = sum(p.numel() for p in critic.model.parameters()) + sum(p.numel() for p in self.head.parameters())
            self.own_flops = 6.0 * n_model * (prompt_tokens + float(mask.sum())) * cfg.critic_epochs
        return {"critic/value_loss": sum(losses) / len(losses)}

    # checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                "adapter": {n: p.detach().clone() for n, p in self._adapter}, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if "head" in state:
            self._pending_state = state
            self.step = int(state.get("step", 0))

    def _load(self, policy, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        named = dict(self._adapter)
        with torch.no_grad():
            for n, value in state["adapter"].items():
                named[n].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])

    def extra_parameters(self) -> int:
        if self.head is None:
            return 0
        n = sum(p.numel() for p in self.head.parameters()) + sum(p.numel() for _, p in self._adapter)
        if self.separate is not None:  # a whole second model, not only its adapter
            n += sum(p.numel() for n_, p in self.separate.model.named_parameters() if "lora_" not in n_)
        return n


__all__ = ["HeadCritic", "OnlineCritic", "ValueHead", "auroc", "clipped_value_loss", "explained_variance", "gae",
           "shaping_rewards"]
