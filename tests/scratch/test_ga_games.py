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


def test_snake_features_point_at_the_food_and_see_the_body():
    game = Snake(size=10)
    stamps = game._empty_stamps(1)
    head, food = np.array([55]), np.array([58])  # food 3 cells to the right of the head
    x = game._features(stamps, 0, head, np.array([UP]), food, np.array([3]))
    assert x[0, 6] == 0 and x[0, 7] > 0  # not ahead, to the right
    assert x[0, :3].tolist() == [0, 0, 0] and x[0, 3:6].tolist() == pytest.approx([0.5, 0.5, 0.4])
    x = game._features(stamps, 0, head, np.array([RIGHT]), food, np.array([3]))
    assert x[0, 6] > 0 and x[0, 7] == 0  # now straight ahead
    # A snake of length 4 at t = 10: head 55 (stamp 10), body 65, 66, 56 (stamps 9, 8, 7).
    # Heading up, the cell to the right (56) is the tail: it moves away, so not an obstacle;
    # below is behind. With length 5 the same cell is body (danger to the right).
    for cell, stamp in [(55, 10), (65, 9), (66, 8), (56, 7)]:
        stamps[0, cell] = stamp
    x = game._features(stamps, 10, head, np.array([UP]), food, np.array([4]))
    assert x[0, :3].tolist() == [0, 0, 0]
    x = game._features(stamps, 10, head, np.array([UP]), food, np.array([5]))
    assert x[0, :3].tolist() == [0, 0, 1] and x[0, 5] == 0


def reference_snake(game: Snake, seed: int, moves: list) -> tuple[int, list[np.ndarray]]:
    """The rules written plainly, the body as a list of cells (head first), for scripted moves
    (None: keep the heading). Returns (food eaten, the frame before each move played)."""
    s, cells = game.size, game.size * game.size
    keys = np.random.default_rng(seed).random((cells, cells))
    centre = (s // 2) * s + s // 2
    body, heading, eaten, hungry = [centre, centre + s, centre + 2 * s], UP, 0, 0

    def place_food():
        free = np.ones(cells, dtype=bool)
        free[body] = False
        return int(np.argmax(np.where(free, keys[eaten % cells], -1.0)))

    def frame():
        grid = np.zeros(cells, dtype=np.uint8)
        grid[body] = 4
        grid[food] = FOOD
        grid[body[0]] = HEAD
        return grid.reshape(s, s)

    food, frames = place_food(), []
    for move in moves:
        frames.append(frame())
        if move is not None and move != (heading + 2) % 4:  # no reversing
            heading = move
        y, x = divmod(body[0], s)
        y, x = y + [-1, 0, 1, 0][heading], x + [0, 1, 0, -1][heading]
        if not (0 <= y < s and 0 <= x < s):
            break
        new = y * s + x
        eats = new == food
        rest = body if eats else body[:-1]  # the tail moves away unless the snake grows
        body, hungry = [new, *rest], 0 if eats else hungry + 1
        if new in rest or hungry >= game.hunger:
            break
        if eats:
            eaten += 1
            food = place_food()
    return eaten, frames


def test_snake_simulation_matches_a_plain_reference_on_scripted_games():
    """Random moves (mostly short games) and a greedy food-chaser (eats, grows, and sooner or
    later bites itself): the same frames before every move and the same score."""
    game = Snake(size=6, episodes=1, hunger=40)
    rng = np.random.default_rng(3)
    bites = 0
    for trial in range(100):
        script = iter(rng.choice([UP, RIGHT, DOWN, LEFT, None], 200).tolist())
        frames, given = [], []

        def steer(frame, score, script=script, frames=frames, given=given, chase=trial % 2):
            frames.append(frame)
            move = next(script)
            if chase:
                (y, x), (fy, fx) = np.argwhere(frame == HEAD)[0], np.argwhere(frame == FOOD)[0]
                move = (DOWN if fy > y else UP) if fy != y else (RIGHT if fx > x else LEFT)
            given.append(move)
            return move

        scores, _ = game.simulate(np.zeros((1, game.genome.length)), [trial], steer=steer)
        eaten, expected = reference_snake(game, trial, given)
        assert scores[0, 0] == eaten and len(frames) == len(expected), trial
        assert all((got == want).all() for got, want in zip(frames, expected, strict=True))
        bites += trial % 2 and eaten >= 3
    assert bites >= 15  # the chasers did grow, so eating and the tail rule were exercised


def test_ending_looping_snakes_early_changes_no_score(monkeypatch):
    game = Snake()
    rng = np.random.default_rng(5)
    random_agents = game.genome.random(rng, 150)  # many of them spin in place until they starve
    trained = evolve(game.genome, game.fitness,
                     Settings(**{**game.settings, "generations": 4, "seed": 1})).population
    ended = []
    looping = Snake._looping

    def counting(*args):
        found = looping(*args)
        ended.append(int(found.sum()))
        return found

    monkeypatch.setattr(Snake, "_looping", staticmethod(counting))
    for population in (random_agents, trained):
        ended.clear()
        fast = game.simulate(population, game.episode_seeds[:6])[0]
        assert sum(ended) > 20  # loops were found and those games ended early
        full = game.simulate(population, game.episode_seeds[:6], skip_loops=False)[0]
        assert (fast == full).all()


def test_looping_needs_the_whole_window_to_repeat():
    """Four games at t = 63 with 32 states of history (codes = cell * 4 + heading): a square
    loop of 4 steps (state repeats, window repeats), the same but hungry only 20 steps, a
    snake of length 17 (longer than any period checked: its body reaches back past the
    window), and a path that comes back to the same state after 8 steps by a different way
    round (not a loop)."""
    square = [10 * 4 + 1, 11 * 4 + 2, 27 * 4 + 3, 26 * 4 + 0]  # right, down, left, up
    looped = square * 8
    detour = ([10 * 4 + 1, 11 * 4 + 1, 12 * 4 + 2, 28 * 4 + 3, 27 * 4 + 3, 26 * 4 + 0, 10 * 4 + 0,
               -1 * 4 + 2] * 4)
    detour[-8:] = [10 * 4 + 1, 11 * 4 + 2, 27 * 4 + 2, 43 * 4 + 3, 42 * 4 + 0, 26 * 4 + 0,
                   10 * 4 + 1, 11 * 4 + 2]  # ends where it was 8 steps ago, different window
    detour[-16] = detour[-8]
    t, width = 63, 32
    history = np.zeros((4, width), dtype=np.int32)
    for row, states in enumerate([looped, looped, looped, detour]):
        for age, state in enumerate(reversed(states)):  # age 0 = the newest, at column t % 32
            history[row, (t - age) % width] = state
    found = Snake._looping(history, np.arange(4), t, np.array([3, 3, 17, 3]),
                           np.array([40, 20, 40, 40]))
    assert found.tolist() == [True, False, False, False]


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
