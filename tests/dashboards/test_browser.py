"""A real headless Chromium loads every report page from file:// and renders every plot.

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash scripts/setup_test_browser.sh``)
and the ``selenium`` package; the driver is the system one, so nothing is downloaded.
Missing, they fail: `bash scripts/setup_test_browser.sh` installs them (scripts/test.sh runs it).
Screenshots go to ``$DETBENCH_TEST_ARTIFACTS`` (default ``reports/_test_artifacts/dashboards``,
ignored by git), one per page.
"""
import os
import shutil
import time

import pytest

import fakes
from fakes import EXPECTED_PLOTS

# headless Chromium
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.environ.get("DETBENCH_TEST_ARTIFACTS", os.path.join(REPO, "reports", "_test_artifacts", "dashboards"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'the selenium package is not installed (python -m pip install -e ".[test]")'
    if not CHROMIUM or not os.path.exists(CHROMEDRIVER):
        return "chromium / chromedriver not found (bash scripts/setup_test_browser.sh)"
    return ""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    why = _missing()
    if why:  # the README's test setup installs both; a missing browser is a failure, never a skip
        pytest.fail(f"browser test cannot run: {why}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-default-apps", "--disable-sync", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _rendered(driver, expected: int, timeout: float = 15.0) -> int:
    """Wait until ``expected`` plots rendered (or time out); returns how many did."""
    deadline = time.monotonic() + timeout
    while True:
        n = driver.execute_script(
            "return document.querySelectorAll('.js-plotly-plot .main-svg').length > 0 ?"
            " document.querySelectorAll('.js-plotly-plot').length : 0")
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def _screenshot(driver, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 600), 8000))
    time.sleep(0.3)  # responsive plots re-layout to the new window size
    path = os.path.join(ARTIFACTS, name.replace("../", "all_studies_").replace("/", "_") + ".png")
    driver.save_screenshot(path)
    driver.set_window_size(1280, 900)
    return path


@pytest.mark.parametrize("name", list(EXPECTED_PLOTS))
def test_page_renders_in_chromium(browser, fake_reports, name):
    path = os.path.normpath(os.path.join(str(fake_reports["reports"]), fakes.STUDY, name))
    browser.get_log("browser")  # drop what earlier pages left
    browser.get("file://" + path)
    assert browser.execute_script("return typeof Plotly") == "object", "plotly.min.js did not load"
    expected = EXPECTED_PLOTS[name]
    assert _rendered(browser, expected) == expected
    assert len(browser.find_elements("css selector", ".plotly-graph-div")) == expected
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    shot = _screenshot(browser, f"{fakes.STUDY}_{name}")
    assert os.path.getsize(shot) > 10_000


def test_links_between_pages_work_from_file_urls(browser, fake_reports):
    start = os.path.join(str(fake_reports["reports"]), "index.html")
    browser.get("file://" + start)
    browser.find_element("link text", fakes.STUDY).click()
    assert browser.current_url.endswith(f"/{fakes.STUDY}/index.html")
    for label, page in (("Accuracy", "accuracy.html"), ("Speed", "speed.html"), ("Losses", "loss.html")):
        browser.find_element("css selector", f'nav a[href="{page}"]').click()
        assert browser.current_url.endswith(f"/{fakes.STUDY}/{page}")
        assert label.lower() in browser.title.lower() or page.split(".")[0] in browser.title.lower()
    assert not [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]


def test_gallery_draws_a_known_box_where_its_object_is(browser, gallery_reports):
    """The first image's last object (drawn on top in the fake image: its centre has its class's colour): its
    ground-truth rect lies over the thumbnail where the box's pixels put it, and the threshold hides boxes."""
    import io

    from PIL import Image

    path = os.path.join(str(gallery_reports["reports"]), fakes.STUDY, "gallery.html")
    browser.get_log("browser")
    browser.get("file://" + path)
    expected = gallery_reports["ctx"].plots["gallery.html"]
    assert _rendered(browser, expected) == expected
    store = gallery_reports["store"]
    gt = store.ground_truth(next(iter(store.trial_data(fakes.STUDY, "val_ground_truth").values())))
    image_id = int(browser.find_element("css selector", ".gcard").get_attribute("data-image"))
    obj = [a for a in gt["annotations"] if a["image_id"] == image_id][-1]
    x, y, w, h = obj["bbox"]
    size = next(img for img in gt["images"] if img["id"] == image_id)
    # the ground-truth panel's thumbnail (the first <image> of the figure) and the object's rect, in page px
    geo = browser.execute_script("""
        const gd = document.querySelector('.gcard .js-plotly-plot'), box = arguments[0];
        const i = gd.layout.shapes.findIndex(s => s.name.startsWith('gt|') && s.x0 === box[0] && s.y0 === box[1]);
        gd.scrollIntoView();
        const r = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
        const img = gd.querySelector('image');  // the first layout image: the ground-truth panel's
        return {image: r(img), shape: r(gd.querySelector(`.shapelayer path[data-index="${i}"]`)),
                dpr: window.devicePixelRatio, loaded: img.href.baseVal};
    """, [x, y])
    il, it, ir, ib = geo["image"]
    sx, sy = (ir - il) / size["width"], (ib - it) / size["height"]
    assert sx == pytest.approx(sy, rel=0.02) and sx > 1  # square pixels, the 128 px image drawn larger
    want = (il + x * sx, it + y * sy, il + (x + w) * sx, it + (y + h) * sy)
    # the rect's bounding box includes half its 2.5 px line on each side
    assert geo["shape"] == pytest.approx(want, abs=2.5)
    assert geo["loaded"].endswith(f"/{image_id}.jpg")
    # the screenshot: the thumbnail's pixels at the rect's centre are the object's colour
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    cx, cy = (want[0] + want[2]) / 2 * geo["dpr"], (want[1] + want[3]) / 2 * geo["dpr"]
    pixel = shot.getpixel((int(cx), int(cy)))
    assert max(abs(p - q) for p, q in zip(pixel, fakes.FILL[obj["category_id"]])) < 40, pixel
    # score threshold 1: no detection is left, the ground truth stays
    visible = browser.execute_script("""
        const t = document.getElementById('g-thr'); t.value = 1; t.dispatchEvent(new Event('input'));
        const gd = document.querySelector('.gcard .js-plotly-plot');
        return gd.layout.shapes.filter(s => s.visible !== false).map(s => s.name.split('|')[0]);
    """)
    assert visible and set(visible) <= {"gt", "miss"} and "gt" in visible
    assert not [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    _screenshot(browser, f"{fakes.STUDY}_gallery.html")
