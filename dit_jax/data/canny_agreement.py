"""Our Canny (dit_jax/data/controls.py) against OpenCV's cv2.Canny on real images: edge F1 per image set.

  python -m dit_jax.data.canny_agreement [--count=64]

Image sets: Fashion-MNIST test items upscaled 28 -> 112 px (bicubic), Twemoji (72 px on white, the emoji
dataset's images), circles (32 px, dit_jax/data/circles.py). Each setting runs both detectors with the same
blur, thresholds and aperture: ours is `controls.canny(image, low, high, sigma, aperture, l2_gradient)`;
OpenCV's is cv2.Canny on cv2.GaussianBlur(image, sigma) (the image as it is when sigma is 0).
Agreement is the F1 of the two edge maps pixel for pixel, with no tolerance (`controls.edge_f1`), over all
images of a set, and the lowest F1 of a single image.
Needs opencv-python-headless (the test extras).
"""

import os

import numpy as np
from absl import app, flags
from PIL import Image

from dit_jax.data import circles, controls, emoji, fashion_mnist, images

# (sigma, low, high, aperture, l2_gradient): the default, cv2.Canny alone, a Euclidean gradient, wider Sobels
# (their magnitudes are larger: thresholds scaled to match).
SETTINGS = [(1.0, 100, 200, 3, False), (0.0, 100, 200, 3, False), (1.0, 50, 150, 3, True),
            (1.0, 400, 800, 5, False), (1.4, 1500, 3000, 7, False)]


def fashion_images(count):
    """The first `count` Fashion-MNIST test items, 112 px (4x, bicubic), 1 channel; [] without the files."""
    path = os.path.join(fashion_mnist.DEFAULT_DIR, fashion_mnist.FILES["test"][0])
    if not os.path.exists(path):
        return []
    items = fashion_mnist.read_idx(path)[:count]
    return [np.asarray(Image.fromarray(x).resize((112, 112), Image.Resampling.BICUBIC))[..., None] for x in items]


def emoji_images(count):
    """`count` Twemoji spread over the set (every k-th file in name order), 72 px on white, RGB."""
    folder = emoji._png_dir()  # pylint: disable=protected-access
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    out = []
    for name in names[::max(1, len(names) // count)][:count]:
        with open(os.path.join(folder, name), "rb") as f:
            out.append(np.asarray(images.decode(f.read())))
    return out


def circle_images(count, size=32):
    return [circles.example(0, i, size)[0] for i in range(count)]


def image_sets(count):
    sets = {"fashion_mnist 112px": fashion_images(count), "emoji 72px": emoji_images(count),
            "circles 32px": circle_images(count)}
    return {k: v for k, v in sets.items() if v}


def opencv_canny(image, low, high, sigma=1.0, aperture=3, l2_gradient=False):
    """The oracle: cv2.GaussianBlur (OpenCV's kernel size for sigma, BORDER_REFLECT_101) then cv2.Canny."""
    import cv2  # pylint: disable=import-outside-toplevel
    x = np.ascontiguousarray(image)
    if sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101).reshape(image.shape)
    return cv2.Canny(np.ascontiguousarray(x), low, high, apertureSize=aperture, L2gradient=l2_gradient)


def agreement(batch, sigma, low, high, aperture=3, l2_gradient=False):
    """(F1 over all the images, lowest F1 of one image, edge pixels in OpenCV's maps)."""
    ours = [controls.canny(x, low, high, sigma, aperture, l2_gradient)[..., 0] for x in batch]
    theirs = [opencv_canny(x, low, high, sigma, aperture, l2_gradient) for x in batch]
    per_image = [controls.edge_f1(a, b) for a, b in zip(ours, theirs)]
    return controls.edge_f1(np.stack(ours), np.stack(theirs)), min(per_image), int(sum((t > 0).sum() for t in theirs))


def main(argv):
    del argv
    import cv2  # pylint: disable=import-outside-toplevel
    print(f"opencv {cv2.__version__}, IPP {'on' if cv2.ipp.useIPP() else 'off'}; {flags.FLAGS.count} images a set")
    print("| images | sigma | low/high | aperture | gradient | F1 | lowest F1 of one image | OpenCV edge pixels |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch in image_sets(flags.FLAGS.count).items():
        for sigma, low, high, aperture, l2 in SETTINGS:
            f1, worst, pixels = agreement(batch, sigma, low, high, aperture, l2)
            print(f"| {name} | {sigma:g} | {low}/{high} | {aperture} | {'L2' if l2 else 'L1'} | {f1:.4f} | "
                  f"{worst:.4f} | {pixels} |")


if __name__ == "__main__":
    flags.DEFINE_integer("count", 64, "Images in each set.")
    app.run(main)
