"""`siamese sweep --collect` reads every flow run of the sweep, past the Prefect server's page
of 200 rows (issue 29, item 9): a grid over 205 points collects 205 rows."""

import pytest

pytestmark = pytest.mark.slow  # the session's Prefect server and 205 flow runs: ~10 s

POINTS = 205  # more than the server returns in one read (PREFECT_SERVER_API_DEFAULT_LIMIT)


def test_a_sweep_of_more_points_than_a_page_is_read_whole_in_the_grids_order(request):
    """The points' flow runs made through Prefect's client as `siamese sweep --pool` makes them
    (tagged, with the point's parameters), in shuffled order; none runs."""
    request.getfixturevalue("prefect_session")
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    from flows.poolsweep import POINT_FLOW, TAG, sweep_points

    @flow(name=POINT_FLOW)
    def stand_in() -> None:
        """Names the runs; never called."""

    sweep = "paged"
    order = sorted(range(1, POINTS + 1), key=lambda i: (i * 37) % POINTS)  # not the grid's
    with get_client(sync_client=True) as client:
        for i in order:
            parameters = {"name": f"{sweep}-{i}", "overrides": [f"train.lr={i}"], "rev": "abc"}
            client.create_flow_run(stand_in, name=f"{sweep}-{i}", parameters=parameters,
                                   tags=[TAG + sweep], state=Completed())
    points = sweep_points(sweep)
    assert [p.name for p in points] == [f"{sweep}-{i}" for i in range(1, POINTS + 1)]
    assert [p.overrides for p in points] == [[f"train.lr={i}"] for i in range(1, POINTS + 1)]
    assert {p.state for p in points} == {"COMPLETED"}
