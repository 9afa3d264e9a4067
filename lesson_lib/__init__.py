"""lesson_lib: the tested implementations behind the course notebooks, one concept per module.

schedules   noise schedules (linear, cosine) and everything precomputed from them, float64
forward     the forward process: q_sample, q_step, q_posterior
param       conversions between eps, x0 and the score
samplers    DDPM and DDIM steps and loops (trajectories, progress bars, generators)
guidance    classifier-free guidance (cfg, guide) and label dropout
unet        the course U-Net, its blocks, and the lesson's SimpleUNet (broken and repaired)
attention   self-attention and the lesson's CrossAttention (einops)
training    the simple eps loss and the training loop (EMA, atomic checkpoints, resume, DDP)
score       2-D Gaussian mixtures with exact scores, Langevin dynamics, a toy denoiser
latent      the autoencoder and latent diffusion with prompt conditioning
text        the toy word-level tokenizer and text encoder
data        MNIST (torchvision or the bundled subset) and 2-D toy data
metrics     the MNIST classifier and sample-quality measures
recipes     the named training recipes behind the shipped models
pretrained  load(name): shipped weights verified by sha256
train       python -m lesson_lib.train --config NAME --out DIR
sample      python -m lesson_lib.sample --model mnist --sampler ddim --steps 50 --w 3
viz         image grids and PNG encoding
widgets     sliders over precomputed pictures (Explorer)
device      cuda, then mps, then cpu
checks      argument checks whose errors name the argument, the value and what is allowed
"""
