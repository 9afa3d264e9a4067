"""lesson_lib: the tested implementations behind the course notebooks, one concept per module.

A strict stack: a module imports only from the layers above it in this list, never sideways into
a circle, never through a function-level import.

checks       argument checks whose errors name the argument, the value and what is allowed
atomic       atomic file writes (temporary file, then rename)
device       cuda, then mps, then cpu; the CPU's bf16 units (AMX or not)
viz          image grids and PNG encoding
data         MNIST (torchvision or the bundled subset) and 2-D toy data
schedules    noise schedules (linear, cosine) and everything precomputed from them, float64
forward      the forward process: q_sample, q_step, q_posterior
param        conversions between eps, x0 and the score
conventions  alpha, sigma, log-SNR, flow time, EDM sigma; eps <-> v <-> flow velocity
guidance     classifier-free guidance (cfg, cfg_eps) and label dropout
losses       the simple eps loss with label dropout and min-SNR-gamma weighting
samplers     DDPM and DDIM steps and loops (trajectories, progress bars, generators)
solvers      fast ODE solvers: Euler, Heun (EDM), DPM-Solver++(2M)
flow         flow matching: the straight path, its loss, Euler sampling, the bridge to DDIM
mixture      2-D Gaussian mixtures with exact scores (and their perfect noise predictor)
score        Langevin dynamics from a score
attention    self-attention and the lesson's CrossAttention (einops)
blocks       the U-Net's blocks: time embedding, residual block with AdaGN, down/up sampling
unet         the course U-Net and its frozen config
simple_unet  the lesson's SimpleUNet (broken and repaired)
denoiser     a small MLP noise predictor for 2-D points
reflow       rectified flow on points: velocity MLP, reflow pairs, straightness
text         the toy word-level tokenizer and text encoder
autoencoder  the VAE of latent diffusion (encode, decode, scale factor)
latent       latent diffusion with prompt conditioning (generate, attention maps)
loop         the training loop (EMA, atomic checkpoints, exact resume, DDP, time limits, bf16)
classifier   the MNIST classifier and its loss
metrics      predictions, accuracy, digit shares, features, novelty
quality      Fréchet distance beside its floor, and the quality report
manifest     the typed manifest of shipped models: read, write, verify, ship
recipes      every training recipe (shipped or not): model, schedule, data, training settings
pretrained   load(name), load_run(DIR): models rebuilt from their recipes, weights verified
snapshots    sample grids saved while training (History)
widgets      sliders over precomputed pictures (Explorer)
exercises    the learner's exercises: check(name, answer), hint, solution
train        python -m lesson_lib.train --config NAME --out DIR (--steps N or --minutes M)
sample       python -m lesson_lib.sample --model mnist --sampler ddim --steps 50 --w 3
"""
