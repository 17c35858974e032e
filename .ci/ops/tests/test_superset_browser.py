"""How superset_browser.py judges the charts it read from a dashboard page."""

import superset_browser as b

NAMES = {"Royalties", "Watch time", "Impressions", "Concurrency"}


def state(name, viz="table", loading=0, errors=(), empty=(), drawn=0):
    return {"name": name, "viz": viz, "loading": loading, "errors": list(errors), "empty": list(empty),
            "drawn": drawn}


def drawn_page():
    return [state(n, drawn=3) for n in sorted(NAMES)]


def test_every_chart_drawn_passes_and_is_done():
    verdict = b.chart_verdicts(drawn_page(), NAMES, final=True)
    assert verdict.done and verdict.failures == []
    assert verdict.outcomes == {n: "drawn" for n in NAMES}


def test_an_error_alert_fails_naming_the_chart_and_its_message():
    page = drawn_page()
    page[0] = state("Concurrency", viz="echarts_timeseries_line",
                    errors=['Data error\nError: relation "videos" does not exist'])
    verdict = b.chart_verdicts(page, NAMES, final=False)
    assert verdict.done
    assert verdict.failures == [
        "chart 'Concurrency' shows an error: Data error\nError: relation \"videos\" does not exist"]
    assert verdict.outcomes["Concurrency"] == "error"


def test_an_empty_state_fails_as_no_data_even_beside_drawn_pictures():
    # the empty state's picture is an SVG, so "drawn" may be non-zero
    page = drawn_page()
    page[1] = state("Impressions", empty=["No results were returned for this query"], drawn=1)
    verdict = b.chart_verdicts(page, NAMES, final=False)
    assert verdict.failures == ["chart 'Impressions' shows no data: No results were returned for this query"]
    assert verdict.outcomes["Impressions"] == "empty"


def test_a_loading_chart_keeps_the_verdict_open_then_fails_on_the_final_look():
    page = drawn_page()
    page[2] = state("Royalties", loading=1)
    early = b.chart_verdicts(page, NAMES, final=False)
    assert not early.done and early.failures == []
    final = b.chart_verdicts(page, NAMES, final=True)
    assert final.failures == ["chart 'Royalties' (table) is still loading"]


def test_a_chart_that_drew_nothing_fails_on_the_final_look():
    page = drawn_page()
    page[3] = state("Watch time", viz="pie")
    assert not b.chart_verdicts(page, NAMES, final=False).done
    assert b.chart_verdicts(page, NAMES, final=True).failures == ["chart 'Watch time' (pie) drew nothing"]


def test_a_chart_missing_from_the_page_fails_and_extra_charts_are_ignored():
    page = [s for s in drawn_page() if s["name"] != "Royalties"] + [state("Someone else's chart", errors=["x"])]
    early = b.chart_verdicts(page, NAMES, final=False)
    assert not early.done and early.failures == []
    final = b.chart_verdicts(page, NAMES, final=True)
    assert final.failures == ["chart 'Royalties' is not on the dashboard page"]
    assert final.outcomes["Royalties"] == "missing"


def test_a_chart_area_without_ink_is_blank_and_one_with_a_line_is_not():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (400, 200), "white")
    # a drawn chart: axis and a line in the left half; the right half stays empty
    draw = ImageDraw.Draw(image)
    draw.line([(10, 190), (190, 190)], fill="gray", width=2)
    draw.line([(10, 180), (100, 40), (190, 120)], fill="teal", width=3)
    areas = [{"name": "Drawn", "x": 0, "y": 0, "width": 200, "height": 200},
             {"name": "Blank", "x": 200.4, "y": 0, "width": 199.6, "height": 200}]
    assert b.blank_areas(image, areas) == ["Blank"]


def test_an_area_filled_with_one_colour_is_blank_whatever_the_colour():
    from PIL import Image

    image = Image.new("RGB", (100, 100), (243, 243, 243))
    assert b.blank_areas(image, [{"name": "Grey", "x": 0, "y": 0, "width": 100, "height": 100},
                                 {"name": "Nothing", "x": 0, "y": 0, "width": 0, "height": 0}]) == ["Grey", "Nothing"]
