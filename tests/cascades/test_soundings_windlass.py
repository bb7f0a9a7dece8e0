"""Phase soundings with Windlass's meaning: models (list/map, model_strategy), mutations (rewrite,
augment, approach, custom), the validator pre-filter, the evaluator's plain-text answer, sounding
template variables, reforge, cost-aware and Pareto picks; also as separate Airflow tasks. Against
the scripted OpenAI-protocol server over real HTTP."""

from __future__ import annotations

import random
import re

import pytest

from airflow_llm_provider.cascade_dags import plan_cascade
from airflow_llm_provider.cascades import CascadeValidationError, load_cascade
from airflow_llm_provider.cascades.run.judging import DEFAULT_EVALUATOR
from airflow_llm_provider.cascades.run.mutations import AUGMENT_TEMPLATES, REWRITER
from airflow_llm_provider.cascades.run.soundings import MODEL_CHOICE
from airflow_llm_provider.cascades.runner import RunOptions, judge_soundings, run_cascade, run_sounding
from airflow_llm_provider.cascades.usage import ModelPrice
from airflow_llm_provider.testing.openai_server import structured, text
from tests.cascades.test_runner import server_models


def one_phase(soundings: dict, instructions: str = "Write a tagline.", **phase) -> dict:
    return {
        "cascade_id": "s",
        "phases": [{"name": "write", "instructions": instructions, "soundings": soundings, **phase}],
    }


def options(server, **kwargs) -> RunOptions:
    return RunOptions(model_factory=server_models(server), **kwargs)


def is_rewrite(request) -> bool:
    return request.text_of("system") == REWRITER


def is_judge(request) -> bool:
    return "Answer with the number (1-" in request.text_of("system")


def is_scorer(request) -> bool:
    return "quality score from 0" in request.text_of("system")


def drafts(server) -> list:
    return [r for r in server.requests if not (is_rewrite(r) or is_judge(r) or is_scorer(r))]


def listing(request) -> dict[int, str]:
    """Attempt/Refinement number -> its text, as the judge was shown them."""
    sections = re.split(r"^## (?:Attempt|Refinement) (\d+)\n", request.text_of("user"), flags=re.M)
    return {int(n): body.strip() for n, body in zip(sections[1::2], sections[2::2], strict=True)}


def by_model(winner: int = 1):
    """Drafts answer with their model name; the judge answers ``winner`` as plain text."""

    def respond(request):
        if is_judge(request):
            return text(f"Attempt {winner} is the best one.")
        return text(f"draft by {request.model}")

    return respond


# -- models -------------------------------------------------------------------------------------


def test_model_list_round_robin_and_unknown_strategies_fall_back_to_it(llm_server):
    llm_server.responder = by_model()
    for strategy in ("round_robin", "weighted"):
        llm_server.reset()
        spec = load_cascade(
            one_phase({"factor": 5, "mutate": False, "models": ["p:m1", "p:m2"], "model_strategy": strategy})
        )
        result = run_cascade(spec, {}, options(llm_server))
        assert result.status == "success", result.error
        assert sorted(r.model for r in drafts(llm_server)) == ["m1", "m1", "m1", "m2", "m2"]
        shown = listing(next(r for r in llm_server.requests if is_judge(r)))
        assert [shown[n] for n in range(1, 6)] == [f"draft by {m}" for m in ("m1", "m2", "m1", "m2", "m1")]


def test_model_strategy_random_is_reproducible_with_a_seed(llm_server):
    llm_server.responder = by_model()
    names = ["p:m1", "p:m2", "p:m3"]
    expected_rng = random.Random(42)
    expected = [expected_rng.choice(names).split(":")[1] for _ in range(6)]
    spec = load_cascade(
        one_phase({"factor": 6, "mutate": False, "models": names, "model_strategy": "random"})
    )

    MODEL_CHOICE.seed(42)
    assert run_cascade(spec, {}, options(llm_server)).status == "success"

    shown = listing(next(r for r in llm_server.requests if is_judge(r)))
    assert [shown[n] for n in range(1, 7)] == [f"draft by {m}" for m in expected]
    assert expected != ["m1", "m2", "m3", "m1", "m2", "m3"]  # the seed does not give round robin


def test_model_map_decides_the_count_and_each_models_settings(llm_server):
    llm_server.responder = by_model()
    models = {"p:big": {"factor": 1, "temperature": 0.2, "max_tokens": 50}, "p:small": {"factor": 3}}
    spec = load_cascade(one_phase({"factor": 2, "mutate": False, "models": models}))

    result = run_cascade(spec, {}, options(llm_server))

    assert result.status == "success", result.error
    sent = drafts(llm_server)
    assert len(sent) == 4  # 1 + 3 from the map, the top-level factor 2 is ignored
    (big,) = [r for r in sent if r.model == "big"]
    assert (
        big.body["temperature"] == 0.2
        and big.body.get("max_completion_tokens", big.body.get("max_tokens")) == 50
    )
    for small in (r for r in sent if r.model == "small"):
        assert not {"temperature", "max_tokens", "max_completion_tokens"} & set(small.body)

    # factor 1 turns soundings off, as in Windlass: one call with the phase's model
    llm_server.reset()
    single = load_cascade(one_phase({"factor": 1, "models": models}, model="p:phase"))
    assert run_cascade(single, {}, options(llm_server)).final == "draft by phase"
    assert len(llm_server.requests) == 1


# -- mutations ----------------------------------------------------------------------------------


def test_rewrite_is_the_default_mutation_and_its_calls_are_counted(llm_server):
    rewrites = iter(range(1, 10))

    def respond(request):
        if is_rewrite(request):
            return text(f"Rewritten prompt {next(rewrites)}")
        if is_judge(request):
            return structured({"winner": 3, "reason": "best"})
        return text("draft: " + request.text_of("system"))

    llm_server.responder = respond
    spec = load_cascade(one_phase({"factor": 3, "evaluator_instructions": "Pick."}))

    result = run_cascade(spec, {}, options(llm_server))

    assert result.status == "success", result.error
    rewrite_requests = [r for r in llm_server.requests if is_rewrite(r)]
    assert len(rewrite_requests) == 2  # soundings 2 and 3; sounding 1 is the baseline
    for request in rewrite_requests:
        assert "## The prompt\nWrite a tagline." in request.text_of("user")
    assert sorted(r.text_of("system") for r in drafts(llm_server)) == [
        "Rewritten prompt 1",
        "Rewritten prompt 2",
        "Write a tagline.",
    ]
    assert result.usage["requests"] == 6  # 3 drafts, 2 rewrites, 1 evaluator
    assert result.final.startswith("draft: Rewritten prompt")


@pytest.mark.parametrize(
    ("mode", "custom", "expected"),
    [
        (
            "augment",
            None,
            ["Write.", f"{AUGMENT_TEMPLATES[0]}\n\nWrite.", f"{AUGMENT_TEMPLATES[1]}\n\nWrite."],
        ),
        ("approach", ["Be bold.", "Be brief."], ["Write.", "Write.\n\nBe bold.", "Write.\n\nBe brief."]),
        ("augment", ["Only one."], ["Write.", "Only one.\n\nWrite.", "Only one.\n\nWrite."]),
    ],
)
def test_augment_prepends_approach_appends_and_custom_mutations_replace_the_built_in(
    llm_server, mode, custom, expected
):
    llm_server.responder = lambda request: text("1") if is_judge(request) else text("draft")
    soundings = {"factor": 3, "mutation_mode": mode, **({"mutations": custom} if custom else {})}
    result = run_cascade(load_cascade(one_phase(soundings, instructions="Write.")), {}, options(llm_server))
    assert result.status == "success", result.error
    by_request_order = sorted(drafts(llm_server), key=lambda r: expected.index(r.text_of("system")))
    assert [r.text_of("system") for r in by_request_order] == expected
    assert not any(is_rewrite(r) for r in llm_server.requests)


# -- judging ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "winner"),
    [("I prefer attempt 2: it is shorter.", 2), ("3", 3), ("none of them", 1), ("Attempt 7", 1)],
)
def test_a_plain_text_judge_answer_picks_by_its_first_number(llm_server, answer, winner):
    def respond(request):
        if is_judge(request):
            return text(answer)
        return text(f"draft {request.text_of('system')[-1]}")

    llm_server.responder = respond
    spec = load_cascade(
        one_phase({"factor": 3, "mutate": False}, instructions="Write {{ sounding_index + 1 }}")
    )
    result = run_cascade(spec, {}, options(llm_server))
    assert result.status == "success", result.error
    assert result.final == f"draft {winner}"
    (judge,) = [r for r in llm_server.requests if is_judge(r)]
    assert judge.text_of("system").startswith(DEFAULT_EVALUATOR)  # no evaluator_instructions


def test_validator_prefilter_judges_only_passing_soundings_or_all_when_none_pass(llm_server):
    def respond(request):
        if is_judge(request):
            return text("1")
        return text(f"answer {request.text_of('system')[-1]}")

    def even(content: str) -> dict:
        """Passes answers that end in an even digit."""
        return {"valid": int(content[-1]) % 2 == 0, "reason": "odd"}

    def never(content: str) -> bool:
        return False

    llm_server.responder = respond
    tools = {"even": even, "never": never}
    for validator, shown in (
        ("even", ["answer 0", "answer 2"]),
        ("never", [f"answer {i}" for i in range(4)]),
    ):
        llm_server.reset()
        body = one_phase(
            {"factor": 4, "mutate": False, "validator": validator}, instructions="N {{ sounding_index }}"
        )
        result = run_cascade(load_cascade(body, tools=list(tools)), {}, options(llm_server, tools=tools))
        assert result.status == "success", result.error
        (judge,) = [r for r in llm_server.requests if is_judge(r)]
        assert list(listing(judge).values()) == shown
        assert result.final == shown[0]


# -- template variables ---------------------------------------------------------------------------


def test_each_sounding_renders_its_own_instructions_and_plain_phases_see_the_defaults(llm_server):
    llm_server.responder = lambda request: text("1") if is_judge(request) else text("ok")
    spec = load_cascade(
        {
            "cascade_id": "fan",
            "phases": [
                {
                    "name": "fan",
                    "instructions": "Item {{ input['items'][sounding_index] }} "
                    "({{ sounding_index }}/{{ sounding_factor }}, {{ is_sounding }})",
                    "soundings": {"factor": "{{ input['items'] | length }}", "mutate": False},
                },
                {
                    "name": "plain",
                    "instructions": "{{ sounding_index }}/{{ sounding_factor }}/{{ is_sounding }}",
                },
            ],
        }
    )
    result = run_cascade(spec, {"items": ["a", "b", "c"]}, options(llm_server))

    assert result.status == "success", result.error
    systems = sorted(r.text_of("system") for r in drafts(llm_server))
    assert systems == ["0/1/False", "Item a (0/3, True)", "Item b (1/3, True)", "Item c (2/3, True)"]


# -- reforge ------------------------------------------------------------------------------------


def reforge_responder(threshold_word: str | None = None):
    rounds = iter(range(1, 100))

    def respond(request):
        if is_judge(request):
            return text("2")
        system = request.text_of("system")
        if "## How to improve it" in system:
            return text(f"refined {next(rounds)}" + (f" {threshold_word}" if threshold_word else ""))
        return text(f"draft {system[-1]}")

    return respond


def test_reforge_refines_the_winner_round_by_round(llm_server):
    llm_server.responder = reforge_responder()
    spec = load_cascade(
        one_phase(
            {
                "factor": 2,
                "mutate": False,
                "max_parallel": 1,
                "evaluator_instructions": "Pick the best draft.",
                "reforge": {
                    "steps": 2,
                    "factor_per_step": 3,
                    "honing_prompt": "Make it punchier for {{ input.audience }}.",
                    "evaluator_override": "Pick the punchiest.",
                },
            },
            instructions="Draft {{ sounding_index }}",
        )
    )
    result = run_cascade(spec, {"audience": "kids"}, options(llm_server))

    assert result.status == "success", result.error
    sent = llm_server.requests
    assert [("judge" if is_judge(r) else "call") for r in sent] == ["call"] * 2 + (
        ["judge"] + ["call"] * 3
    ) * 2 + ["judge"]
    first_round, second_round = sent[3:6], sent[7:10]
    for request in first_round:
        system = request.text_of("system")
        assert "## The current best answer\ndraft 1" in system  # the soundings' winner (attempt 2)
        assert "Make it punchier for kids." in system
        assert "## The task\nDraft 1" in system
    for request in second_round:
        assert "## The current best answer\nrefined 2" in request.text_of("system")  # round 1's #2
    assert "Pick the best draft." in sent[2].text_of("system")
    assert all("Pick the punchiest." in sent[i].text_of("system") for i in (6, 10))
    assert "## Refinement 3" in sent[10].text_of("user")
    assert result.final == "refined 5"
    assert result.usage["requests"] == 11


def test_reforge_threshold_stops_early(llm_server):
    llm_server.responder = reforge_responder(threshold_word="DONE")

    def done(content: str) -> bool:
        return "DONE" in content

    spec = one_phase(
        {
            "factor": 2,
            "mutate": False,
            "reforge": {
                "steps": 3,
                "factor_per_step": 2,
                "honing_prompt": "Improve.",
                "threshold": {"validator": "done"},
            },
        },
        instructions="Draft {{ sounding_index }}",
    )
    result = run_cascade(load_cascade(spec, tools=["done"]), {}, options(llm_server, tools={"done": done}))

    assert result.status == "success", result.error
    refinements = [r for r in llm_server.requests if "## How to improve it" in r.text_of("system")]
    assert len(refinements) == 2  # one round of two, then the threshold passed
    assert result.final.endswith("DONE")


# -- cost-aware and Pareto picks --------------------------------------------------------------------

PRICE = ModelPrice(input_per_mtok=1_000_000, output_per_mtok=1_000_000)  # one dollar per token
TOKENS = {"cheap": (10, 5), "mid": (10, 20), "dear": (10, 90)}


def priced(scores: str = "", judge: str = "1"):
    def respond(request):
        if is_scorer(request):
            return text(scores)
        if is_judge(request):
            return text(judge)
        return text(f"draft by {request.model}", usage=TOKENS[request.model])

    return respond


def test_cost_aware_evaluation_shows_models_costs_and_weights_to_the_judge(llm_server):
    llm_server.responder = priced(judge="2")
    spec = one_phase(
        {
            "factor": 3,
            "mutate": False,
            "models": ["p:cheap", "p:dear", "p:mid"],
            "evaluator_instructions": "Pick.",
            "cost_aware_evaluation": {"quality_weight": 0.6, "cost_weight": 0.4},
        }
    )
    result = run_cascade(load_cascade(spec), {}, options(llm_server, declared_price=PRICE))

    assert result.status == "success", result.error
    (judge,) = [r for r in llm_server.requests if is_judge(r)]
    assert "quality at 60% and cost at 40%" in judge.text_of("system")
    assert listing(judge) == {
        1: "Model: p:cheap\nCost: $15.000000\ndraft by cheap",
        2: "Model: p:dear\nCost: $100.000000\ndraft by dear",
        3: "Model: p:mid\nCost: $30.000000\ndraft by mid",
    }
    assert result.final == "draft by dear"


@pytest.mark.parametrize(
    ("policy", "scores", "winner"),
    [
        ("prefer_cheap", "Attempt 1: 40\nAttempt 2: 90\nAttempt 3: 60", "cheap"),
        ("prefer_quality", "Attempt 1: 40\nAttempt 2: 90\nAttempt 3: 60", "dear"),
        # per dollar: 40/15 = 2.7, 90/100 = 0.9, 60/30 = 2.0; dear is dominated by mid below
        ("balanced", "Attempt 1: 40 - thin\nAttempt 2: 50\nAttempt 3: 60", "cheap"),
        ("prefer_quality", "Attempt 1: 40\nAttempt 2: 50\nAttempt 3: 60", "mid"),
    ],
)
def test_pareto_frontier_picks_by_policy_from_quality_scores_and_costs(llm_server, policy, scores, winner):
    llm_server.responder = priced(scores=scores)
    spec = one_phase(
        {
            "factor": 3,
            "mutate": False,
            "models": ["p:cheap", "p:dear", "p:mid"],
            "evaluator_instructions": "Judge taglines.",
            "pareto_frontier": {"enabled": True, "policy": policy},
        }
    )
    result = run_cascade(load_cascade(spec), {}, options(llm_server, declared_price=PRICE))

    assert result.status == "success", result.error
    (scorer,) = [r for r in llm_server.requests if is_scorer(r)]
    assert scorer.text_of("system").startswith("Judge taglines.")
    assert "Model: p:dear\ndraft by dear" in scorer.text_of("user")
    assert not any(is_judge(r) for r in llm_server.requests)
    assert result.final == f"draft by {winner}"


def test_interactive_pareto_is_refused_and_human_evaluation_is_accepted():
    with pytest.raises(CascadeValidationError, match="interactive"):
        load_cascade(one_phase({"factor": 2, "pareto_frontier": {"enabled": True, "policy": "interactive"}}))
    # a person judging soundings is run/human_judging.py (tests/tools/test_human_tools.py)
    load_cascade(one_phase({"factor": 2, "evaluator": "hybrid", "llm_prefilter": 1, "human_eval": {}}))
    # the keys implemented here are accepted
    load_cascade(
        one_phase(
            {
                "factor": 2,
                "mutation_mode": "augment",
                "mutations": ["x"],
                "validator": "v",
                "model_strategy": "random",
                "models": ["p:a"],
                "cost_aware_evaluation": {"enabled": True},
                "pareto_frontier": {"enabled": False, "policy": "interactive"},
                "reforge": {"honing_prompt": "Better."},
            }
        ),
        tools=["v"],
    )


# -- soundings as separate Airflow tasks ---------------------------------------------------------


def test_run_sounding_and_judge_soundings_keep_the_engines_per_sounding_meaning(llm_server):
    def respond(request):
        if is_judge(request):
            return text("2")
        system = request.text_of("system")
        if "## How to improve it" in system:
            return text("refined")
        return text(f"{request.model}: {system}")

    llm_server.responder = respond
    spec = load_cascade(
        one_phase(
            {
                "factor": 3,
                "mutation_mode": "approach",
                "mutations": ["Be brief."],
                "models": {"p:a": {"factor": 1, "temperature": 0.1}, "p:b": {"factor": 1}},
                "validator": "short",
                "reforge": {"steps": 1, "factor_per_step": 2, "honing_prompt": "Polish it."},
            },
            instructions="Item {{ input['items'][sounding_index] }}",
        ),
        tools=["short"],
    )

    def short(content: str) -> bool:
        return "Be brief." in content

    opts = options(llm_server, tools={"short": short})
    inputs = {"items": ["x", "y"]}
    outcomes = [run_sounding(spec, "write", i, inputs, {}, opts) for i in range(2)]
    assert [o.output for o in outcomes] == ["a: Item x", "b: Item y\n\nBe brief."]
    assert llm_server.requests[0].body["temperature"] == 0.1

    llm_server.reset()
    judged = judge_soundings(
        spec, "write", [(i, o.output, None) for i, o in enumerate(outcomes)], inputs, {}, opts
    )
    # the pre-filter leaves sounding 2 alone (no judge), then one reforge round of two refinements
    refinements = [r for r in llm_server.requests if "## How to improve it" in r.text_of("system")]
    assert len(refinements) == 2
    assert all(
        "## The current best answer\nb: Item y\n\nBe brief." in r.text_of("system") for r in refinements
    )
    assert judged.output == "refined"

    plan = plan_cascade(spec, soundings_as_tasks=True)
    assert [(t.task_id, t.soundings) for t in plan.tasks] == [("write.attempt", 2), ("write.evaluate", 2)]
    costly = load_cascade(one_phase({"factor": 3, "cost_aware_evaluation": {"enabled": True}}))
    assert [t.task_id for t in plan_cascade(costly, soundings_as_tasks=True).tasks] == ["write"]
