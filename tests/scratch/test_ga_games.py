"""scratch.ga games (coins, snake), human play, replays and the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from scratch.ga import Settings, evolve, random_search
from scratch.ga.cli import main
from scratch.ga.coins import AGENT, Coins
from scratch.ga.play import play_coins, play_snake
from scratch.ga.snake import FOOD, HEAD, Snake

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3


def test_coins_walls_block_and_coins_count_once():
    game = Coins()
    # From S at (1, 1): right x3 along the corridor, then a wall stops the 4th; down x2 hits a coin.
    path, collected = game.walk(np.array([[RIGHT, RIGHT, RIGHT, RIGHT, LEFT, LEFT, LEFT, DOWN]]))
    assert path[0, 4] == path[0, 3]  # blocked
    plan = np.array([[DOWN, DOWN, UP, DOWN, UP, DOWN]])  # visit the coin at (3, 1) three times
    assert game.fitness(plan)[0] == 1
    assert collected.sum() == 0
    frames = game.frames(plan[0])
    assert len(frames) == plan.shape[1] + 1 and (frames[-1] == AGENT).sum() == 1


def test_ga_beats_random_search_on_coins_at_equal_evaluations():
    game = Coins()
    result = evolve(game.genome, game.fitness, Settings(**{**game.settings, "generations": 40}))
    _, random_best, _ = random_search(game.genome, game.fitness, result.evaluations)
    assert result.best_score > random_best


def test_snake_steering_into_the_wall_ends_the_game():
    game = Snake(size=8, episodes=1)
    frames = []
    scores, _ = game.simulate(
        np.zeros((1, game.genome.length)),
        [0],
        steer=lambda frame, score: frames.append(frame) or UP,
    )
    # Starts at the centre (row 4) heading up: 4 moves reach row 0, the 5th leaves the board.
    assert len(frames) == 5 and scores.shape == (1, 1)
    assert (frames[0] == HEAD).sum() == 1 and (frames[0] == FOOD).sum() == 1


def test_snake_population_is_simulated_independently_and_deterministically():
    game = Snake(size=10, episodes=3)
    population = game.genome.random(np.random.default_rng(0), 12)
    together = game.fitness(population)
    alone = np.array([game.fitness(population[i : i + 1])[0] for i in range(12)])
    assert (together == alone).all()
    assert (game.fitness(population) == together).all()


def test_snake_features_point_at_the_food():
    game = Snake(size=10)
    life = np.zeros((1, 100), dtype=np.int16)
    head, food = np.array([55]), np.array([58])  # food 3 cells to the right of the head
    x = game._features(life, head, np.array([UP]), food, np.array([3]))
    assert x[0, 6] == 0 and x[0, 7] > 0  # not ahead, to the right
    x = game._features(life, head, np.array([RIGHT]), food, np.array([3]))
    assert x[0, 6] > 0 and x[0, 7] == 0  # now straight ahead


def test_ga_beats_random_search_on_snake():
    game = Snake(size=10, episodes=4)
    settings = Settings(**{**game.settings, "population": 100, "generations": 30, "seed": 2})
    result = evolve(game.genome, game.fitness, settings)
    _, random_best, _ = random_search(game.genome, game.fitness, result.evaluations, batch=100)
    assert result.best_score > random_best


def test_humans_can_play_both_games():
    out: list[str] = []
    keys = iter(["ss", "q"])
    assert play_coins(Coins(), read=lambda _: next(keys), write=out.append) == 1
    assert out[-1] == "game over: 1 coins"
    keys = iter(["w"] * 20)  # straight up into the wall
    score = play_snake(Snake(), read=lambda _: next(keys), write=out.append)
    assert out[-1] == f"game over: {score} food"


def test_cli_json_schema_plot_and_gif(tmp_path):
    out, plot, gif = tmp_path / "r.json", tmp_path / "f.png", tmp_path / "r.gif"
    rc = main(
        [
            "--game",
            "coins",
            "--generations",
            "5",
            "--population",
            "30",
            "--seed",
            "3",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--gif",
            str(gif),
            "--quiet",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["game"] == "coins"
    assert isinstance(report["best_score"], float)
    assert isinstance(report["random_search_best"], float)
    assert [h["generation"] for h in report["history"]] == list(range(6))
    assert all({"best", "mean"} <= set(h) for h in report["history"])
    assert report["best_score"] == max(h["best"] for h in report["history"])
    assert plot.read_bytes()[:4] == b"\x89PNG" and gif.read_bytes()[:3] == b"GIF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "r.gif", "r.json"]


def test_cli_same_seed_same_json(tmp_path):
    reports = []
    for name in ("a", "b"):
        main(
            [
                "--game",
                "onemax",
                "--generations",
                "3",
                "--population",
                "20",
                "--seed",
                "5",
                "--json",
                str(tmp_path / name),
                "--quiet",
            ]
        )
        reports.append(json.loads((tmp_path / name).read_text()))
    assert reports[0] == reports[1]


def test_cli_stopping_rule_ends_the_run_early(tmp_path):
    out = tmp_path / "r.json"
    main(
        [
            "--game",
            "onemax",
            "--population",
            "50",
            "--generations",
            "200",
            "--patience",
            "1",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    report = json.loads(out.read_text())
    assert report["generations"] == len(report["history"]) - 1 < 200


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "scratch.ga", *args], capture_output=True, text=True, timeout=60
    )


def test_list_games_names_first():
    done = run_cli("--list-games")
    assert done.returncode == 0
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == ["coins", "snake", "onemax", "rastrigin"]


@pytest.mark.parametrize(
    "args",
    [
        ["--game", "chess"],
        ["--game", "coins", "--population", "0"],
        ["--game", "coins", "--generations", "many"],
        ["--game", "onemax", "--gif", "x.gif"],
        ["--game", "coins", "--crossover", "blend"],
    ],
)
def test_bad_input_gives_one_line_error(args, tmp_path):
    done = run_cli(*args, "--json", str(tmp_path / "out.json"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")
    assert not (tmp_path / "out.json").exists()


def test_scratch_ga_never_imports_torch():
    code = ("import sys, scratch.ga.cli, scratch.ga.play, scratch.ga.render; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False"
