"""FFHQ face alignment (NVlabs/ffhq-dataset ``download_ffhq.py`` ``recreate_aligned_images``, as pSp/e4e
``scripts/align_all_parallel.py`` ``align_face`` runs it): dlib's 68 landmarks, the FFHQ crop
quadrilateral, then crop, reflect-pad with blur and median fill, and a quad warp.

Images: PIL RGB in, tensors [3, size, size] in [-1, 1] out. Needs the optional extra
(``pip install 'ganinv[align]'``: dlib and face_recognition_models for the landmark model).
Deviation: ``transform_size`` defaults to ``output_size`` as pSp/e4e do (the FFHQ dataset itself
warped at 4096 px and downsampled to 1024).
"""
import functools

import numpy as np
from PIL import Image

from .images import open_image, to_tensor

ALIGN_HINT = "align=true needs the optional face-alignment extra: pip install 'ganinv[align]'"


@functools.lru_cache(maxsize=1)
def dlib_models():
    """(dlib frontal face detector, 68-landmark shape predictor), loaded once; a one-line ImportError
    naming the extra when it is not installed."""
    try:
        import dlib
        import face_recognition_models
    except ImportError:
        raise ImportError(ALIGN_HINT) from None
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    return dlib.get_frontal_face_detector(), predictor


def face_landmarks(image, name="image"):
    """dlib's 68 landmarks [68, 2] (x, y) of the face in an RGB uint8 array [H, W, 3]. With
    several faces the last detection is used, as the official script does."""
    detector, predictor = dlib_models()
    faces = detector(image, 1)
    if len(faces) == 0:
        raise ValueError(f"{name}: no face found for alignment")
    shape = predictor(image, faces[len(faces) - 1])
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def ffhq_quad(landmarks):
    """The FFHQ crop quadrilateral [4, 2] (corners) and its side length from 68 landmarks:
    centred 0.1 of the way from the eyes to the mouth, oriented by eye-to-eye minus the
    rotated eye-to-mouth vector, side max(4·|eye-eye|, 3.6·|eye-mouth|)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]), np.hypot(*x) * 2


def ffhq_align(img, landmarks, output_size, transform_size=None):
    """Crop, pad (reflect + blur + median fill) and warp a PIL RGB image to the FFHQ framing of
    its face, ``output_size`` px square. transform_size defaults to output_size, as pSp/e4e
    (the FFHQ dataset itself warped at 4096 and downsampled to 1024)."""
    transform_size = transform_size or output_size
    quad, qsize = ffhq_quad(landmarks)
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        small = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(small, Image.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0),
            min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - crop[0:2]
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0),
           max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        import scipy.ndimage

        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blurred = scipy.ndimage.gaussian_filter(arr, [qsize * 0.02, qsize * 0.02, 0])
        arr += (blurred - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad = quad + pad[:2]
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return img


def align_face(path, size):
    """An image file -> its FFHQ-aligned face [3, size, size] in [-1, 1] (needs the align extra)."""
    img = open_image(path)
    return to_tensor(ffhq_align(img, face_landmarks(np.asarray(img), str(path)), size))
