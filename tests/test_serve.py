"""`python -m dit_jax.serve`: every endpoint through gradio_client, the page in a real browser, bad input.

One toy run (text and classes, random weights, 2 sampler steps) and one launched app serve every test.
"""

import io
import json
import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from dit_jax import sampling, serve
from dit_jax.data import prepare
from dit_jax.text.encoders import resolve
from dit_jax.training.recipe import base_config, emoji_minilm
from test_sample import TOY, save_random_model

gradio_client = pytest.importorskip("gradio_client", reason="the demo's extra is not installed: pip install -e .[test]")
CLASSES = ["apple", "rocket", "snowman"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir as training leaves it (export/, run.json sampling 2 steps) and its data's manifest."""
    root = tmp_path_factory.mktemp("serve")
    workdir, data_dir = root / "run", root / "data"
    config = emoji_minilm(base_config(), resolution=16, max_examples=64)
    config.sample.update(steps=2, sampler="dpmpp_2m", cfg_scale=3.0)
    save_random_model(dict(TOY, num_classes=3, text_dim=384, text_len=16, text_pooled=True), workdir / "export")
    (workdir / "run.json").write_text(json.dumps({"config": config.to_dict()}))
    folder = prepare.prepared_dir(config, str(data_dir))
    os.makedirs(folder)
    text = dict(encoder="minilm", source=resolve("minilm", ""), dim=384, max_length=16, layer="last")
    with open(os.path.join(folder, prepare.MANIFEST), "w") as f:
        json.dump(dict(text=text, space="pixel", vae=None, image_shape=[16, 16, 3], class_names=CLASSES), f)
    return str(workdir), str(data_dir)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(run):
    """The app, started as the command starts it (checks, load, warm-up compiles), listening on a free port."""
    workdir, data_dir = run
    port = free_port()
    demo, page = serve.start(workdir, port, data_dir=data_dir, max_images=2)
    serve.launch(page, port=port, block=False)
    yield demo, f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def client(served):
    return gradio_client.Client(served[1], verbose=False)


def read(gallery):
    return [np.asarray(Image.open(item["image"]["path"] if isinstance(item["image"], dict) else item["image"]))
            for item in gallery]


def png(tmp_path, name, array, mode=None):
    path = str(tmp_path / name)
    Image.fromarray(array, mode).save(path)
    return path


def test_generate_is_the_sampling_librarys_images_and_reports_every_step(served, client, run):
    demo, _ = served
    got = read(client.predict("a red apple", "rocket", "dpmpp_2m", 2, 3.0, 7, 2, api_name="/generate"))
    assert len(got) == 2 and got[0].shape == (16, 16, 3) and not np.array_equal(got[0], got[1])
    # The same request through the library `sample` uses: the same images, bit for bit (PNG is lossless).
    setup = sampling.read_setup(workdir=run[0], data_dir=run[1])
    want = sampling.sample_images(setup, sampling.Settings(sampler="dpmpp_2m", steps=2, cfg_scale=3.0, seed=7),
                                  ["a red apple"], [1], num_images=2, verbose=False).images
    np.testing.assert_array_equal(np.stack(got), want)
    # The progress bar is told each step as the sampler reaches it.
    seen = []
    demo.sample("generate", "a red apple", "rocket", "dpmpp_2m", 2, 3.0, 7, 2,
                progress=lambda fraction, desc: seen.append((fraction, desc)))
    assert seen == [(0.5, "step 1 of 2"), (1.0, "step 2 of 2")]


def test_inpaint_keeps_the_unpainted_pixels_and_img2img_at_strength_1_is_generate(client, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)  # fitted to 16x16 by the app
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[:, 16:] = (0, 0, 0, 255)  # the right half painted
    editor = dict(background=gradio_client.handle_file(png(tmp_path, "in.png", image)),
                  layers=[gradio_client.handle_file(png(tmp_path, "mask.png", layer, "RGBA"))], composite=None)
    got = read(client.predict("a snowman", "snowman", 2, 3.0, 0, 2, editor, "ddim", api_name="/inpaint"))
    fitted = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BICUBIC, reducing_gap=2.0))
    np.testing.assert_array_equal(got[0][:, :8], fitted[:, :8])
    assert not np.array_equal(got[0][:, 8:], fitted[:, 8:])

    source = gradio_client.handle_file(png(tmp_path, "start.png", image))
    args = ("a snowman", "apple", "dpmpp_2m", 2, 3.0, 5, 2)  # the warmed-up shapes
    plain = read(client.predict(*args, api_name="/generate"))
    np.testing.assert_array_equal(read(client.predict(*args, source, 1.0, api_name="/img2img"))[0], plain[0])
    half = read(client.predict(*args, source, 0.6, api_name="/img2img"))[0]  # 1 of 2 steps from the image
    assert not np.array_equal(half, plain[0]) and half.std() > 0


@pytest.mark.parametrize("endpoint, args, message", [
    ("/generate", ("  ", "apple", "dpmpp_2m", 2, 3.0, 0, 1), "Type a prompt"),
    ("/generate", ("cat", "apple", "dpmpp_2m", 2, 3.0, 0, 3), "greater than maximum value 2"),
    ("/generate", ("cat", "apple", "dpmpp_2m", 0, 3.0, 0, 1), "less than minimum value 1"),
    ("/generate", ("cat", "pear", "dpmpp_2m", 2, 3.0, 0, 1), "pear is not in the list of choices"),
    ("/inpaint", ("cat", "apple", 2, 3.0, 0, 1, None, "ddim"), "Upload an image to inpaint"),
    ("/img2img", ("cat", "apple", "dpmpp_2m", 2, 3.0, 0, 1, "small", 0.5), "this model makes 16x16"),
])
def test_bad_requests_are_messages_in_the_page(client, tmp_path, endpoint, args, message):
    if "small" in args:
        small = gradio_client.handle_file(png(tmp_path, "small.png", np.full((8, 8, 3), 9, np.uint8)))
        args = tuple(small if a == "small" else a for a in args)
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict(*args, api_name=endpoint)
    assert message in str(e.value) and "Traceback" not in str(e.value)


def test_inpainting_offers_only_the_samplers_that_inpaint(client, tmp_path):
    image = gradio_client.handle_file(png(tmp_path, "in.png", np.zeros((16, 16, 3), np.uint8)))
    layer = gradio_client.handle_file(png(tmp_path, "m.png", np.full((16, 16, 4), 255, np.uint8), "RGBA"))
    editor = dict(background=image, layers=[layer], composite=None)
    with pytest.raises(gradio_client.exceptions.AppError, match=r"dpmpp_2m is not in the list of choices: \['ddpm', 'ddim'\]"):
        client.predict("cat", "apple", 2, 3.0, 0, 1, editor, "dpmpp_2m", api_name="/inpaint")


def test_a_port_in_use_and_a_run_without_export_fail_in_one_line_before_loading(run, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ValueError, match=r"Port \d+ on 127.0.0.1 is in use .*pass --port with a free one"):
            serve.start(run[0], busy.getsockname()[1])
    unfinished = shutil.copytree(run[0], tmp_path / "unfinished", ignore=shutil.ignore_patterns("export"))
    with pytest.raises(FileNotFoundError, match="has no export .*serve a finished run"):
        serve.start(str(unfinished), free_port())


def browse(url, prompt, screenshot, profile):
    """Headless chromium types `prompt`, presses Generate, waits for the first picture and saves a screenshot of
    the page; returns that picture's pixels as the browser shows them. (docs/serve.png is made with this.)"""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 120)
        box = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
        box.send_keys(prompt)
        browser.find_element(By.CSS_SELECTOR, "button#generate").click()
        picture = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "#gallery img")))
        wait.until(lambda _: picture.get_attribute("complete") == "true" and
                   int(picture.get_attribute("naturalWidth")) > 0)
        pixels = np.asarray(Image.open(io.BytesIO(picture.screenshot_as_png)).convert("RGB"))
        browser.save_screenshot(screenshot)
        return pixels
    finally:
        browser.quit()


def test_the_page_in_a_browser_generates_an_image(served, tmp_path):
    """A real browser: the page loads, takes a prompt, and shows a generated picture that is not blank."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver, "
                    "as the README's test command does)")
    pixels = browse(served[1], "a red apple", str(tmp_path / "serve.png"), str(tmp_path / "profile"))
    assert pixels.std() > 10, "the generated picture is blank"
    assert os.path.getsize(tmp_path / "serve.png") > 10_000
