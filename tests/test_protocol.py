"""Parsing caller lines for routing, and KataGo-format errors."""

from __future__ import annotations

import json

import pytest

from katapool.protocol.analysis import BadRequest, parse_request, restrict_to_turns


def bad(line: str) -> dict[str, object]:
    with pytest.raises(BadRequest) as info:
        parse_request(line)
    return info.value.response


def test_turns_are_unique_and_default_to_the_last() -> None:
    assert parse_request('{"id":"a","moves":[["B","Q16"],["W","D4"]]}').turns == [2]
    assert parse_request('{"id":"a","moves":[["B","Q16"]],"analyzeTurns":[1,0,1]}').turns == [0, 1]


def test_turns_are_read_as_katago_reads_them() -> None:
    # KataGo takes any JSON number (or boolean) as a turn, cut to an integer: katapool must
    # count the same turns, or it refuses queries KataGo answers (or waits for the wrong finals).
    moves = '[["B","Q16"],["W","D4"],["B","Q4"]]'
    assert parse_request(f'{{"id":"a","moves":{moves},"analyzeTurns":[1.0,2.7,true]}}').turns \
        == [1, 2]
    assert parse_request('{"id":"t","action":"terminate","terminateId":"a","turnNumbers":[1.0,3]}'
                         ).turn_numbers == [1, 3]
    assert parse_request('{"id":"t","action":"terminate_all"}').turn_numbers is None
    payload = {"id": "x", "moves": [], "analyzeTurns": [0.0, 3.5, 5], "priorities": [1, 9, 4]}
    assert restrict_to_turns(payload, [3, 5])["priorities"] == [9, 4]


def test_a_byte_order_mark_is_skipped() -> None:
    assert parse_request('\ufeff{"id":"a","moves":[]}').id == "a"


def test_an_action_that_is_not_a_string_is_a_query() -> None:
    # As in KataGo, which then checks the line as a query (and answers it).
    req = parse_request('{"id":"a","action":5,"moves":[]}')
    assert (req.action, req.turns) == (None, [0])


def test_unknown_fields_pass_through() -> None:
    req = parse_request('{"id":"a","moves":[],"fancyNewField":3}')
    assert req.raw["fancyNewField"] == 3


@pytest.mark.parametrize("line,field,message", [
    ("not json", None, "could not parse input line as json request"),
    ("[1,2]", None, "not an object"),
    ('{"moves":[]}', None, 'must have a string "id"'),
    ('{"id":7,"moves":[]}', None, 'must have a string "id"'),
    ('{"id":"a","action":"dance"}', "action", "'action' field must be"),
    ('{"id":"a","action":"terminate"}', "terminateId", "terminateId"),
    ('{"id":"a","action":"terminate_all","turnNumbers":"x"}', "turnNumbers", "array of integers"),
    ('{"id":"a"}', "moves", "Must specify an array of [player,location] pairs"),
    ('{"id":"a","moves":"Q16"}', "moves", 'Must be an array of pairs of the form: ["b" or "w"'),
    ('{"id":"a","moves":[],"analyzeTurns":[1]}', "analyzeTurns", "Invalid turn number: 1"),
    ('{"id":"a","moves":[],"analyzeTurns":["0"]}', "analyzeTurns", "array of integers"),
    ('{"id":"a","moves":[],"analyzeTurns":[]}', "analyzeTurns", "analyzeTurns is empty"),
    ('{"id":"a","moves":[],"komi":NaN}', None, "NaN is not a number JSON allows"),
    ('{"id":"a","moves":[],"komi":1e400}', None, "1e400 is not a number JSON allows"),
    ('{"id":"v","action":"query_version","x":-Infinity}', None, "-Infinity is not a number"),
])
def test_errors_in_katago_format(line: str, field: str | None, message: str) -> None:
    response = bad(line)
    assert message in str(response["error"])
    assert response.get("field") == field
    json.dumps(response)  # always serialisable
    if field is not None:
        assert response["id"] == "a"


def test_restrict_keeps_each_turns_priority() -> None:
    payload = {"id": "x", "moves": [], "analyzeTurns": [0, 3, 5], "priorities": [1, 9, 4]}
    assert restrict_to_turns(payload, [3, 5]) == {
        "id": "x", "moves": [], "analyzeTurns": [3, 5], "priorities": [9, 4]}
    assert restrict_to_turns({"moves": [], "priority": 2}, [0]) == {
        "moves": [], "priority": 2, "analyzeTurns": [0]}
