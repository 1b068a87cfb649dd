"""Deforum-style animation: the pure parts of an animation job, everything but the diffusion model.

``settings`` holds and checks what the artist chose (and imports a Deforum settings file); ``schedules``
parses and evaluates keyframed schedules such as ``0: (1.0), 30: (1.02+0.002*sin(2*pi*t/30))`` without
ever executing code; ``plan`` turns settings into one ``FramePlan`` per frame (prompts and their blend,
seeds and noise travel, strength, noise, CFG, camera motion, cadence); ``noise`` slerps seeded latent
noise; ``motion`` warps, noises and blends frames; ``colour`` keeps later frames in the first frame's
colours; ``clips`` writes MP4 (H.264), GIF and animated WebP without ever leaving a half-written file.

The engine runs a job with these pieces: for each diffused frame it warps the previous picture by the
planned motion, matches its colours, adds noise and asks img2img for ``1 - strength`` of denoising;
cadence in-betweens are warped and blended, never diffused.
"""
