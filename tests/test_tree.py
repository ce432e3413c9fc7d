import math

import pytest

from idea_mcts.tree import Node, Tree


def hand_tree() -> tuple[Tree, list[Node]]:
    """root -> a, b; a -> c. Visits/values set by backpropagation."""
    t = Tree("s", "root instruction", rng_seed=0)
    a = t.add_child(t.root, "add_goals", "A", "expand", t.next_id())
    b = t.add_child(t.root, "add_constraints", "B", "expand", t.next_id())
    c = t.add_child(a, "format_output", "C", "rollout", t.next_id())
    for n in (t.root, a, b, c):
        n.reward = 5.0  # evaluated nodes (a node whose every scorer failed has reward None)
    return t, [a, b, c]


def test_backprop_mean_and_max_on_hand_tree():
    t, (a, b, c) = hand_tree()
    c.terminal = True
    t.backpropagate(c, 9.0)
    t.backpropagate(b, 6.0)
    t.backpropagate(c, 3.0)
    assert (t.root.visits, a.visits, b.visits, c.visits) == (3, 2, 1, 2)
    assert t.root.value("mean") == pytest.approx(6.0)
    assert a.value("mean") == pytest.approx(6.0) and a.value("max") == 9.0
    assert b.value("mean") == 6.0 and b.value("max") == 6.0
    assert t.root.value("max") == 9.0
    # only paths ending in a terminal node are marked
    assert t.root.on_terminal_path and a.on_terminal_path and c.on_terminal_path and not b.on_terminal_path


def test_uct_formula_and_unvisited_first():
    t, (a, b, c) = hand_tree()
    assert Tree.uct(a, t.root, 1.0) == math.inf
    c.terminal = True
    t.backpropagate(c, 8.0)  # root 1, a 1
    assert t.select(1.0) is b  # b unvisited -> +inf beats a
    t.backpropagate(b, 2.0)  # root 2, b 1
    expected_a = 8.0 + 1.0 * math.sqrt(math.log(2) / 1)
    expected_b = 2.0 + 1.0 * math.sqrt(math.log(2) / 1)
    assert Tree.uct(a, t.root, 1.0) == pytest.approx(expected_a)
    assert Tree.uct(b, t.root, 1.0) == pytest.approx(expected_b)
    # follows a (higher UCT); a's only child c is a rollout node, not part of the search tree: a is the leaf
    assert t.select(1.0) is a


def test_uct_exploration_constant_changes_choice():
    t, (a, b, _) = hand_tree()
    for _ in range(9):
        t.backpropagate(a, 5.0)
    t.backpropagate(b, 4.5)
    # a: 5 + C*sqrt(ln 10 / 9); b: 4.5 + C*sqrt(ln 10 / 1)
    assert t.select(0.0) is a  # pure exploitation: the higher mean
    assert t.select(1.0) is b


@pytest.mark.parametrize(("depth", "reward", "terminal"),
                         [(4, 10.0, False), (5, 1.0, True), (2, 10.01, True), (0, None, False)])
def test_terminal_rules(depth, reward, terminal):
    n = Node("s/1", "s", "s/0", depth, "a", "expand", "x", reward=reward)
    assert Tree.is_terminal(n, max_depth=4, reward_threshold=10.0) is terminal


def test_selection_skips_terminal_unscored_and_exhausted_subtrees():
    t, (a, b, c) = hand_tree()
    d = t.add_child(a, "add_reasoning", "D", "expand", t.next_id())
    d.reward = 5.0
    for n in (a, b, d):
        t.backpropagate(n, 5.0)
    b.terminal = True
    assert t.select(1.0) is d  # b is terminal: never selected; a is expanded: its expansion child d is the leaf
    d.reward = None  # every scorer failed on d: a failed evaluation, not a node to expand
    assert not t.is_open(d) and not t.is_open(a)
    assert t.select(1.0) is None  # nothing left to expand in this tree
    t.root.reward = None  # an unscored root is still expanded (the tree would be empty otherwise)
    bare = Tree("r", "root only", rng_seed=0)
    bare.root.reward = None
    assert bare.select(1.0) is bare.root


def test_records_round_trip_mean_and_max():
    t, (a, b, c) = hand_tree()
    c.terminal = True
    for reward in (9.0, 3.0, 4.5):
        t.backpropagate(c, reward)
    t.backpropagate(b, 6.0)
    assert a.value("mean") != a.value("max")
    back = Tree.from_records(t.records())
    for node in back:
        orig = t.nodes[node.node_id]
        assert (node.visits, node.value("mean"), node.value("max")) == (orig.visits, orig.value("mean"),
                                                                         orig.value("max"))
    assert back.nodes[a.node_id].value("max") == 9.0
    assert back.nodes[a.node_id].value("mean") == pytest.approx(5.5)


def test_records_round_trip_and_outline():
    t, (a, b, c) = hand_tree()
    c.terminal = True
    c.scores = {"quality": 4.0, "complexity": 2.5, "diversity": 3.0}
    c.reward = 9.5
    t.backpropagate(c, 9.5)
    back = Tree.from_records(t.records())
    assert [n.to_record() for n in back] == [n.to_record() for n in t]
    assert back.ids_issued == t.ids_issued
    text = back.outline()
    assert text.splitlines()[0] == "*   [seed] Q – C – D – R 5.00 | V 9.50 N 1 | root instruction"
    assert "*T~     [format_output] Q 4.00 C 2.50 D 3 R 9.50 | V 9.50 N 1 | C" in text
    assert back.outline(max_lines=2).splitlines()[-1] == "… 2 more nodes"
