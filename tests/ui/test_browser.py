"""A real browser drives the app: type a prompt, pick two words, enable a method, generate, see the image and a
heatmap; then load a built-in preset and see the controls change. Needs Debian's chromium and chromedriver
(tools/test.sh installs them where it can); a screenshot is saved under artifacts/."""

import re
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import attnkit  # noqa: E402
from attnkit.ui.panel import build_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    pipes = {}

    def loader(name):  # each built-in model once; any other name is the SD 1.5 one (the model box test types)
        name = name if name in ("tiny-sd15", "tiny-flux") else "tiny-sd15"
        if name not in pipes:
            pipes[name] = attnkit.load_pipeline(name, device="cpu")
        return pipes[name]

    presets = tmp_path_factory.mktemp("presets")
    demo = build_app(loader=loader, default_model="tiny-sd15", preset_dir=str(presets))
    demo.preset_dir = presets
    demo.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,2400",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def find(driver, css, timeout=60):
    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def click(driver, element):
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    driver.execute_script("arguments[0].click();", element)


def pick(browser, container, words, timeout=60):
    """Tick ``words`` in a word picker, again if a late picker refresh (from typing) unticked them."""
    deadline = time.time() + timeout
    while True:
        time.sleep(0.5)  # let refreshes still in flight from typing arrive first
        labels = {el.text.strip(): el for el in browser.find_elements(By.CSS_SELECTOR, f"{container} label")}
        boxes = {w: labels[w].find_element(By.CSS_SELECTOR, "input") for w in words}
        for box in boxes.values():
            if not box.is_selected():
                click(browser, box)
        time.sleep(0.5)
        labels = {el.text.strip(): el for el in browser.find_elements(By.CSS_SELECTOR, f"{container} label")}
        if all(labels[w].find_element(By.CSS_SELECTOR, "input").is_selected() for w in words):
            return
        assert time.time() < deadline, f"could not pick {words}"


def test_generate_and_load_a_preset_in_a_browser(app, browser):
    browser.get(app.local_url)
    prompt = find(browser, "#ak-prompt textarea")
    prompt.send_keys("a red car and a blue bird")
    prompt.send_keys(Keys.TAB)  # blur: the word picker refreshes
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ak-words input")) >= 7)
    pick(browser, "#ak-words", ["car", "bird"])
    click(browser, find(browser, "#ak-acc-observe button, #ak-acc-observe .label-wrap"))
    click(browser, find(browser, "#ak-enable-observe input"))
    WebDriverWait(browser, 30).until(  # the section's header shows the method is on
        lambda d: "(on)" in d.find_element(By.CSS_SELECTOR, "#ak-acc-observe .label-wrap, #ak-acc-observe button").text)
    click(browser, find(browser, "#ak-generate"))
    WebDriverWait(browser, 180).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#ak-images img") and d.find_elements(By.CSS_SELECTOR,
                                                                                          "#ak-heatmaps img"))
    captions = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#ak-heatmaps .caption-label, "
                                                                          "#ak-heatmaps figcaption")]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-generate.png"))
    assert browser.find_elements(By.CSS_SELECTOR, "#ak-heatmaps img")
    assert not captions or any("car" in c for c in captions)

    # load a built-in preset: the structured toggle turns on, observe turns off
    click(browser, find(browser, "#ak-acc-presets button, #ak-acc-presets .label-wrap"))
    dropdown = find(browser, "#ak-preset input")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", dropdown)
    dropdown.click()
    option = find(browser, "#ak-preset [role='option'][aria-label='Keep attributes with objects (conjunction)']")
    option.click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#ak-preset input").get_attribute("value")
        == "Keep attributes with objects (conjunction)")
    click(browser, find(browser, "#ak-preset-load"))
    time.sleep(2)
    click(browser, find(browser, "#ak-acc-structured button, #ak-acc-structured .label-wrap"))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#ak-enable-structured input").is_selected())
    assert not browser.find_element(By.CSS_SELECTOR, "#ak-enable-observe input").is_selected()
    WebDriverWait(browser, 30).until(
        lambda d: "(on)" in d.find_element(By.CSS_SELECTOR, "#ak-acc-structured .label-wrap, "
                                                            "#ak-acc-structured button").text)
    assert browser.find_element(By.CSS_SELECTOR, "#ak-structured_conjunction input").is_selected()
    browser.save_screenshot(str(ARTIFACTS / "app-preset.png"))


def test_edit_a_photo_in_a_browser(app, browser, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (128, 128), (40, 140, 200)).save(photo)
    browser.get(app.local_url)
    tab = WebDriverWait(browser, 60).until(
        lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "button[role='tab'], .tab-nav button")
                        if b.text.strip() == "Edit a photo"), None))
    click(browser, tab)
    find(browser, "#ak-edit-image input[type='file']").send_keys(str(photo))
    source = find(browser, "#ak-edit-source textarea, #ak-edit-source input")
    source.send_keys("a cat and a dog")
    source.send_keys(Keys.TAB)
    find(browser, "#ak-edit-target textarea, #ak-edit-target input").send_keys("a cat and a fox")
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ak-edit-words input")) >= 5)
    pick(browser, "#ak-edit-words", ["dog"])
    steps = find(browser, "#ak-edit-steps input[type='number']")
    steps.clear()
    steps.send_keys("4", Keys.TAB)
    click(browser, find(browser, "#ak-edit-run"))
    WebDriverWait(browser, 180).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ak-edit-views img")) >= 3)
    WebDriverWait(browser, 60).until(lambda d: "PSNR" in d.find_element(By.CSS_SELECTOR, "#ak-edit-status").text)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-edit.png"))
    assert browser.find_elements(By.CSS_SELECTOR, "#ak-edit-maps img")  # the dog's map and the masks


def counting_pipe_lookups(app):
    """Count the app's model lookups (every handler that reads the model box makes one)."""
    state = app.attnkit_state
    calls = []
    real = type(state).pipe

    def counted(model):
        calls.append(time.time())
        return real(state, model)

    state.pipe = counted
    return calls


def test_typing_in_the_model_box_sends_a_handful_of_requests(app, browser):
    calls = counting_pipe_lookups(app)
    try:
        browser.get(app.local_url)
        box = find(browser, "#ak-model textarea, #ak-model input")
        time.sleep(2)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        for ch in "tiny-flux":
            box.send_keys(ch)
            time.sleep(0.15)
        typed = time.time()
        time.sleep(10)
        while_typing = len([t for t in calls if t >= typed - 2])
        box.send_keys(Keys.TAB)  # leaving the box reads it once
        left = time.time()
        time.sleep(10)
        after_leaving = len([t for t in calls if t >= left])
    finally:
        del app.attnkit_state.pipe
    print(f"model lookups: {while_typing} while typing and 10 s after, {after_leaving} in 10 s after leaving the box")
    assert while_typing == 0, "typing in the model box made the app read the model"
    assert 1 <= after_leaving <= 10, f"{after_leaving} lookups in 10 s after leaving the model box"


def test_a_saved_preset_is_listed_after_a_reload(app, browser):
    from attnkit.methods import StructuredGuidance
    from attnkit.presets import Preset

    browser.get(app.local_url)
    find(browser, "#ak-prompt textarea")
    Preset.from_methods([StructuredGuidance()], name="saved before reload").save(app.preset_dir, overwrite=True)
    browser.refresh()
    click(browser, find(browser, "#ak-acc-presets button, #ak-acc-presets .label-wrap"))
    dropdown = find(browser, "#ak-preset input")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", dropdown)
    dropdown.click()
    time.sleep(2)
    options = [o.get_attribute("aria-label") for o in browser.find_elements(By.CSS_SELECTOR, "#ak-preset [role='option']")]
    assert "saved before reload" in options, options


def test_stop_with_nothing_running_says_so(app, browser):
    browser.get(app.local_url)
    click(browser, find(browser, "#ak-stop"))
    WebDriverWait(browser, 30).until(
        lambda d: "Nothing is running." in d.find_element(By.CSS_SELECTOR, "#ak-status").text)


def status_text(browser):
    return browser.find_element(By.CSS_SELECTOR, "#ak-status").text


def test_a_damaged_share_code_leaves_every_control_a_control(app, browser):
    browser.get(app.local_url)
    find(browser, "#ak-prompt textarea")
    click(browser, find(browser, "#ak-acc-presets button, #ak-acc-presets .label-wrap"))
    box = find(browser, "#ak-share textarea, #ak-share input")
    box.send_keys("ak1.this-is-not-a-preset")
    click(browser, find(browser, "#ak-import"))
    WebDriverWait(browser, 30).until(lambda d: "Error:" in status_text(d))
    time.sleep(12)  # longer than a toast lives
    assert "not an attnkit share code" in status_text(browser) or "damaged" in status_text(browser)
    for control in ("#ak-seed", "#ak-steps", "#ak-cfg"):
        assert browser.find_elements(By.CSS_SELECTOR, f"{control} input"), f"{control} is no longer a control"
        assert not browser.find_elements(By.CSS_SELECTOR, f"{control} .error"), f"{control} shows an error pill"
    assert not browser.find_elements(By.CSS_SELECTOR, ".toast-body.error, .toast-wrap .error")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-error.png"))


def test_a_failed_generate_keeps_the_message_and_the_last_results(app, browser):
    browser.get(app.local_url)
    prompt = find(browser, "#ak-prompt textarea")
    prompt.send_keys("a red car")
    click(browser, find(browser, "#ak-generate"))
    WebDriverWait(browser, 180).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ak-images img"))
    WebDriverWait(browser, 30).until(lambda d: "Done." in status_text(d))
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys(Keys.DELETE)
    click(browser, find(browser, "#ak-generate"))
    WebDriverWait(browser, 60).until(lambda d: "type a prompt first" in status_text(d))
    time.sleep(12)
    assert "type a prompt first" in status_text(browser) and "from an earlier run" in status_text(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "#ak-images img"), "the last result was wiped"


def test_the_dice_asks_for_a_random_seed_and_share_codes_can_be_copied(app, browser):
    browser.get(app.local_url)
    click(browser, find(browser, "#ak-seed-random"))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#ak-seed input").get_attribute("value") == "-1")
    click(browser, find(browser, "#ak-acc-presets button, #ak-acc-presets .label-wrap"))
    find(browser, "#ak-share button")  # the copy button
    # a run with seed -1 gets a random seed, said in the status
    find(browser, "#ak-prompt textarea").send_keys("a red car")
    set_number(browser, "#ak-steps", 3)
    click(browser, find(browser, "#ak-generate"))
    WebDriverWait(browser, 120).until(lambda d: "random seed: " in status_text(d))
    assert browser.find_elements(By.CSS_SELECTOR, "#ak-images img")


def set_number(browser, container, value):
    box = find(browser, f"{container} input[type='number']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def test_progress_shows_the_steps_asked_for_and_the_refinement_tries(app, browser):
    browser.get(app.local_url)
    prompt = find(browser, "#ak-prompt textarea")
    prompt.send_keys("a cat and a frog")
    prompt.send_keys(Keys.TAB)
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ak-words input")) >= 5)
    pick(browser, "#ak-words", ["cat", "frog"])
    click(browser, find(browser, "#ak-acc-attend_excite button, #ak-acc-attend_excite .label-wrap"))
    click(browser, find(browser, "#ak-enable-attend_excite input"))
    click(browser, find(browser, "#ak-compare input"))
    set_number(browser, "#ak-steps", 12)
    # every text the progress bar shows, recorded in the page as it changes (polling could miss a short pass)
    browser.execute_script("""
        window.akSeen = new Set();
        const note = () => document.querySelectorAll('.progress-text, .progress-level-inner')
            .forEach(el => window.akSeen.add(el.textContent));
        new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true});
    """)
    click(browser, find(browser, "#ak-generate"))
    WebDriverWait(browser, 240).until(lambda d: "Done." in status_text(d))
    text = " | ".join(sorted(browser.execute_script("return Array.from(window.akSeen);")))
    print("progress seen:", text[:600])
    assert re.search(r"attnkit step \d+/12", text), text
    assert re.search(r"refining, try \d+ of at most 20|optimising", text), text
    assert re.search(r"baseline step \d+/12", text), text
    assert "/13" not in text, "PNDM's extra step showed"


def shown(browser, css) -> bool:
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return bool(found) and found[0].is_displayed()


def test_choosing_a_flux_model_hides_the_sd_only_sections(app, browser):
    browser.get(app.local_url)
    WebDriverWait(browser, 60).until(
        lambda d: "random weights" in d.find_element(By.CSS_SELECTOR, "#ak-model-note").text)
    assert shown(browser, "#ak-acc-structured") and not shown(browser, "#ak-acc-conditions")
    box = find(browser, "#ak-model input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("tiny-flux")
    time.sleep(1)
    option = find(browser, "#ak-model [role='option']")  # the list filtered to the built-in Flux model
    assert "random weights" in option.text, option.text
    option.click()
    WebDriverWait(browser, 120).until(
        lambda d: "Hidden for Flux models" in d.find_element(By.CSS_SELECTOR, "#ak-model-note").text)
    WebDriverWait(browser, 30).until(lambda d: shown(d, "#ak-acc-conditions"))
    for section in ("structured", "attend_excite", "a_star"):
        assert not shown(browser, f"#ak-acc-{section}"), f"{section} is still shown on a Flux model"
    assert shown(browser, "#ak-acc-observe")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-flux.png"))
