"""Every numeric convention of the PRN pipeline lives here (one place for each constant)."""

#: Side of the network input crop and of the UV position map, in pixels.
RESOLUTION = 256
#: Largest side, in texels, of a face's UV texture (reconstruct.texture_side): by default a face gets the smallest
#: of 256, 512, 1024, 2048 texels at which one texel spans at most one photo pixel, so a high-resolution photo keeps
#: its detail (a 256-texel texture of a face 1,500 pixels wide spans six pixels a texel). 2048 x 2048 float RGB is
#: 48 MB.
TEXTURE_MAX = 2048
#: The network's sigmoid output is multiplied by this (256 * 1.1) to give crop pixels.
POS_SCALE = 281.6

#: Crop from a detector box: centre moved down by this fraction of the box size ...
BOX_CENTER_SHIFT = 0.14
#: ... and the square crop side is this multiple of the mean box side (PRNet api.py).
BOX_CROP_SCALE = 1.58
#: Crop from 68 landmarks (or a GT landmark box): side = mean box side * this, no shift. The training renderer
#: draws every face in this crop, before the paper's scale augmentation (x0.9-1.2).
KPT_CROP_SCALE = 1.6
#: At inference the crops the project makes (from a detector box or from 68 landmarks: photos, the re-crop, video
#: tracking) are shrunk about their centre by this factor; a given 3DDFA roi box is used as it is (it is already
#: 1.06-1.13x tighter than the landmark crop of the same face). Measured on real faces that are not evaluation images,
#: the pseudo set (``python -m prn_blender.evaluate.calibrate_zoom``; stop 25, the shipped model, mean NME of the
#: sources): zoom 1.0 / 1.1 / 1.15 / 1.2 / 1.25 gave 3.89 / 3.30 / 3.11 / 3.03 / 3.04 % with landmark crops and
#: 4.41 / 3.36 / 3.11 / 3.10 / 3.48 % with detector crops and the re-crop; 1.15 rather than 1.2, a step further
#: from where the detector path falls off (chosen before the test photos were run). Held-out synthetic faces want
#: 1.0-1.05 (the synthetic test, seed 777: 3.50 % at 1.0, 3.55 % at 1.15). It is a property of the model: a weights
#: file may record its own (metadata ``inference_zoom``, core.weights.inference_zoom; an imported PRNet checkpoint
#: records 1, its own crops); this is the value for those that do not (the shipped model).
INFERENCE_ZOOM = 1.15
#: Still images average several views of each crop: every crop runs at each of ``InferenceOptions.scales`` (multiples
#: of its side) turned by each of ``InferenceOptions.turns`` (degrees, CropTransform.angle, about the crop centre),
#: and the un-cropped position maps are averaged. The default is one scale and three turns, PHOTO_TURNS (3x the
#: network time). Pseudo real set (165 faces, detector crops, mean NME of the sources; the shipped model at stop 32,
#: rule runs/s32_rule.txt): the earlier default, scales 0.95 / 1 / 1.05 unturned, 3.151 %; one scale turned by
#: -A / 0 / +A: A = 8 3.129, 12 3.048, 20 3.015, 25 3.002 (photos 3.79, people 3.86, webcam 2.17, talking 2.19),
#: 30 3.041; the three scales plus two turned views (5 views): +-12 3.077, +-20 3.039, +-30 3.034. Each of the three
#: views alone: upright 3.170, +25 3.241, -25 3.356 (their errors differ, so the mean gains); the median of the three
#: instead of the mean 3.031; the upright view weighted 1/2 and each turned one 1/4, 3.006 (stop 34). (The width-8
#: model of stop 12 chose the three scales on held-out synthetic faces: 4.22 % one view, 4.12 % three scales.)
#: For the shipped model: the model card's ours vs ours_one_view rows.
PHOTO_SCALES = (1.0,)
PHOTO_TURNS = (-25.0, 0.0, 25.0)
#: Video tracking runs one view: the crop follows the previous frame's landmarks and the One Euro filter averages
#: over time, and footage needs the frame rate.
VIDEO_SCALES = (1.0,)
VIDEO_TURNS = (0.0,)

#: The re-crop's first pass (a detected face is run again, cropped from the first pass's landmarks) runs one view:
#: only its landmarks' box counts. Pseudo real set, detector crops, mean of the sources (stop 25): 3.104 % with the
#: first pass at three scales, 3.113 % at one scale, 3.201 % at one scale without mirror averaging; stop 32, with
#: PHOTO_TURNS for the second pass: 3.002 % with this one view, 3.239 % with the first pass at PHOTO_TURNS too.
FIRST_PASS_VIEWS = ((1.0, 0.0),)

#: The zoomed crops cut more of the forehead and neck, and their position maps guess those worse (held-out synthetic
#: faces, seed 4242, n=32, dense 2D error in % of the landmark box: forehead rows 4.31 -> 5.71, neck rows 5.58 ->
#: 6.83). So still images also run one wider view, the crop's side x the zoom (a zoomed crop's un-zoomed one), and
#: the face's surface outside the 68 landmarks' hull in UV comes from it, blended over PERIPHERY_FADE UV pixels; the
#: landmarks and everything inside the hull come from the zoomed views (InferenceOptions.periphery; measured: dense
#: error 5.11 % zoomed views alone, 4.46 % the wide view alone, 4.40 % blended, forehead 4.29, neck 5.56).
PERIPHERY_FADE = 25
#: A detected face's second pass (InferenceOptions.recrop) runs its zoomed views twice: as they are, and with the
#: surround Gaussian-blurred outside the first pass's landmark hull grown by SURROUND_BLUR (core.context.blur_surround,
#: as train.py --context-blur blurs training scenes; InferenceOptions.surround_blur). The surface comes from the
#: blurred views, but within JAW_SHARP[0] UV pixels of the jaw's landmark polyline (0-16) from the sharp ones, mixed
#: linearly out to JAW_SHARP[1] (every other landmark is 24 or more UV pixels from it). The blur helps the inner
#: points and not the jaw line. Shipped model, real faces that are not evaluation images (pseudo set, mean of the
#: sources, 3DDFA_V2 labels), detector crops, against no blur (95 % paired-bootstrap intervals): blurred views alone
#: 2.921 -> 2.736 % (stop 44; inner 51 points -0.21 [-0.29, -0.14], jaw -0.13 [-0.48, +0.16]; G = 1.5: -0.05);
#: with the jaw kept sharp 2.767 % (-0.154 [-0.220, -0.103], stop 45), and on the inner points against a second,
#: independent labeller (MediaPipe Face Landmarker) -0.160 [-0.201, -0.125]. The 16 AFLW2000-3D images, detector
#: crops: blurred views alone 4.158 -> 4.262 % (jaw 6.68 -> 7.29, every inner group better), with the jaw kept sharp
#: 4.157 -> 4.107 % (stop 45: 11 images better, 5 worse). Cost: the second pass's network passes double.
SURROUND_BLUR = 1.25
JAW_SHARP = (4.0, 20.0)
#: Video runs the wide view on key frames only, every VIDEO_WIDE_EVERY-th frame of a track (and each detection); the
#: frames between cross-fade the last two key frames' views, carried rigidly onto each frame's face (core.video
#: iter_video ``wide_every``). Six synthetic clips (seeds 1-6, 60 frames, yaw up to 45 deg, one scale + flip, One Euro
#: filter), dense 2D error in % of the landmark box, outside-the-hull frame-to-frame jitter, CPU time per frame:
#: no wide view 4.37 % (forehead 5.00, neck 6.68), jitter 0.332, 107 ms; every frame 3.66 (3.31, 5.38), 0.327, 180 ms;
#: key frames every 5: 3.73, 0.361, 144 ms; every 10: 3.77 (3.41, 5.67), 0.333, 134 ms; every 20: 3.84, 0.313, 125 ms.
#: Switching to each new key frame's view outright instead of cross-fading: every 10 3.72 % but the periphery jumped
#: on the key frames (jitter there 0.709 vs 0.317 between them). Real clips (../shared/videos, 120 frames), distance of
#: the periphery to the every-frame view's in % of the landmark box: webcam 4.00 without, 1.23 with key frames;
#: talking face 3.95, 2.15.
VIDEO_WIDE_EVERY = 10

#: Crops made from the project's own landmarks (the re-crop of a detected face, video tracking) are turned with the
#: head's roll beyond +-ROLL_FREE degrees (CropTransform.angle, InferenceOptions.roll_free): the shipped model's
#: landmarks degrade fast with roll although training turns its scenes by up to 45 deg. Pseudo real set (validation),
#: detection + re-crop, mean NME of the sources, None (never turned) / 0 / 5 / 10 / 20: faces turned by 15 deg 4.05 /
#: 3.25 / 3.21 / 3.26 / 3.36 %; by 30 deg 6.49 / 5.63 / 5.78 / 5.97 / 6.16; by 45 deg 7.03 / 4.02 / 4.28 / 4.80 /
#: 5.47; the natural faces 3.11 / 3.23 / 3.20 / 3.19 / 3.10 (small turns of near-upright faces cost a little).
#: The 16 AFLW2000-3D photos, detector crops: 4.93 -> 4.94 %; turned by 15 / 30 / 45 deg: 5.36 -> 4.98, 4.60 -> 4.75,
#: 5.82 -> 5.05 (rule and figures: stop 26). At 60 and 90 deg the first pass already fails (pseudo photos turned:
#: 49 and 70 % either way): a detector that finds turned faces upright would be needed there.
ROLL_FREE = 10.0

#: iBUG-68 part names by index range (used for empty names and bone mapping).
IBUG68_PARTS = (
    ("jaw", 0, 17), ("brow_r", 17, 22), ("brow_l", 22, 27), ("nose", 27, 36),
    ("eye_r", 36, 42), ("eye_l", 42, 48), ("mouth", 48, 60), ("lips", 60, 68),
)


def ibug68_part(i: int) -> str:
    """Name of the facial part landmark ``i`` (0..67) belongs to. 'r'/'l' are the subject's right/left."""
    for name, a, b in IBUG68_PARTS:
        if a <= i < b:
            return name
    raise IndexError(i)


#: Region labels of a UV layout and the paper's loss weights for them.
REGION_NECK, REGION_FACE, REGION_EYES, REGION_NOSE, REGION_MOUTH, REGION_LANDMARK = 0, 1, 2, 3, 4, 5
#: Named loss-weight presets: weight of (landmark, eyes/nose/mouth, face, neck).
WEIGHT_PRESETS = {
    "paper": (16.0, 4.0, 3.0, 0.0),
    # the paper's ratios plus a small neck weight: with 0 the unsupervised neck rows of the mesh come out as noise
    "paper-neck": (16.0, 4.0, 3.0, 1.0),
    "uniform": (1.0, 1.0, 1.0, 1.0),
    "no-neck": (1.0, 1.0, 1.0, 0.0),
    "study-3-2-1": (3.0, 2.0, 1.0, 0.0),
    "study-10-3-2": (10.0, 3.0, 2.0, 0.0),
}

#: iBUG-68 (upper, lower) lid landmark pairs: their distances are the eyes' opening (train.loop.lid_loss,
#: evaluate.expression_response.eye_aperture).
LID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))

#: iBUG-68 index of each landmark's mirror image (left <-> right).
IBUG68_MIRROR = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
    27, 28, 29, 30, 35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,
    64, 63, 62, 61, 60, 67, 66, 65,
)
