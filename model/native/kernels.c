/*
 * Native CPU kernels for the reversible U-Net's hot layers, called from TypeScript through
 * Deno FFI (see native.ts): the depthwise 3D convolution (stride 1, "same", channel-last) with
 * its two gradients, and GroupNorm with a fused activation and its analytic gradient.
 *
 * Why here and not in tfjs: the cpu backend's JavaScript kernels reach about 0.14 GFLOP/s on the
 * depthwise convolution and run GroupNorm as a dozen full-size passes; these loops vectorize over
 * the channels (the innermost, contiguous axis) and run on every core with OpenMP.
 *
 * Conventions: tensors are dense float32, row-major; `x` is [n, d, h, w, c]; a depthwise filter is
 * [kd, kh, kw, c] (the trailing 1 of tfjs's [kd, kh, kw, c, 1] dropped) with odd sizes; GroupNorm
 * statistics `mean` and `rstd` are [n, groups]. Work is split over threads in fixed contiguous
 * ranges and partial sums are reduced in thread order, so results depend only on the thread count.
 * Sums over voxels are carried in double.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* Activation codes shared with native.ts. */
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_RELU6 = 2 };

EXPORT void rev_set_threads(int32_t n) {
  if (n > 0) omp_set_num_threads(n);
}

EXPORT int32_t rev_threads(void) { return omp_get_max_threads(); }

/* Bumped whenever an exported signature changes; native.ts refuses a library of another version. */
EXPORT int32_t rev_abi_version(void) { return 2; }

/* The range [*lo, *hi) of part `t` of `count` items split in `parts` contiguous parts. */
static void split_range(int64_t count, int t, int parts, int64_t *lo, int64_t *hi) {
  *lo = count * t / parts;
  *hi = count * (t + 1) / parts;
}

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- depthwise conv3d ------------------------------------------------------------------------ */

/*
 * out[ch] += Σ over the valid taps of x[tap voxel][ch] · f[tap][ch], for one output voxel.
 * `xv` points at the input voxel under the kernel's corner tap (a, b, e) = (0, 0, 0), possibly
 * outside the volume; only taps a in [a0, a1), b in [b0, b1), e in [e0, e1) are read.
 */
static inline void dw_voxel(float *restrict out, const float *restrict xv,
                            const float *restrict f, int64_t c, int64_t sz, int64_t sy,
                            int kh, int kw, int a0, int a1, int b0, int b1, int e0, int e1) {
  /* Blocks of 16 channels stay in registers across all taps (one store per block instead of one
   * per tap); the taps are added in the same order either way, so the sums are the same. */
  enum { LANES = 16 };
  int64_t ch0 = 0;
  for (; ch0 + LANES <= c; ch0 += LANES) {
    float acc[LANES];
    for (int k = 0; k < LANES; k++) acc[k] = out[ch0 + k];
    for (int a = a0; a < a1; a++) {
      for (int b = b0; b < b1; b++) {
        const float *xr = xv + a * sz + b * sy + ch0;
        const float *fr = f + ((int64_t)(a * kh + b) * kw) * c + ch0;
        for (int e = e0; e < e1; e++) {
          const float *restrict xp = xr + e * c;
          const float *restrict fp = fr + e * c;
          for (int k = 0; k < LANES; k++) acc[k] += xp[k] * fp[k];
        }
      }
    }
    for (int k = 0; k < LANES; k++) out[ch0 + k] = acc[k];
  }
  for (int a = a0; a < a1; a++) {
    for (int b = b0; b < b1; b++) {
      const float *xr = xv + a * sz + b * sy;
      const float *fr = f + ((int64_t)(a * kh + b) * kw) * c;
      for (int e = e0; e < e1; e++) {
        const float *restrict xp = xr + e * c;
        const float *restrict fp = fr + e * c;
        for (int64_t ch = ch0; ch < c; ch++) out[ch] += xp[ch] * fp[ch];
      }
    }
  }
}

/*
 * Depthwise correlation, stride 1, zero padding "same": y[n,z,y,u,ch] = Σ_{a,b,e}
 * x[n, z+a-pd, y+b-ph, u+e-pw, ch] · f[a,b,e,ch]. With `flip` set the filter is read reversed
 * along all three spatial axes, which makes this the gradient with respect to the input (dy in,
 * dx out). Rows (n, z, y) are split over threads. Returns 0, or -1 when memory ran out.
 */
EXPORT int32_t rev_dwconv3d(const float *restrict x, const float *restrict filter, float *restrict y,
                         int32_t n, int32_t d, int32_t h, int32_t w, int32_t c, int32_t kd,
                         int32_t kh, int32_t kw, int32_t flip) {
  const int64_t taps = (int64_t)kd * kh * kw;
  const float *f = filter;
  float *flipped = NULL;
  if (flip) {
    flipped = malloc(sizeof(float) * taps * c);
    if (!flipped) return -1;
    for (int64_t t = 0; t < taps; t++) {
      memcpy(flipped + (taps - 1 - t) * c, filter + t * c, sizeof(float) * c);
    }
    f = flipped;
  }
  const int pd = (kd - 1) / 2, ph = (kh - 1) / 2, pw = (kw - 1) / 2;
  const int64_t sy = (int64_t)w * c, sz = (int64_t)h * sy, sn = (int64_t)d * sz;
  const int64_t rows = (int64_t)n * d * h;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const int64_t i = r / ((int64_t)d * h);
    const int z = (int)((r / h) % d), yy = (int)(r % h);
    const int a0 = (int)max64(0, pd - z), a1 = (int)min64(kd, (int64_t)d + pd - z);
    const int b0 = (int)max64(0, ph - yy), b1 = (int)min64(kh, (int64_t)h + ph - yy);
    float *out = y + i * sn + z * sz + yy * sy;
    memset(out, 0, sizeof(float) * sy);
    /* x at tap (0, 0, 0) of output voxel u is at offset (z-pd, yy-ph, u-pw). */
    const float *base = x + i * sn + (int64_t)(z - pd) * sz + (int64_t)(yy - ph) * sy;
    for (int u = 0; u < w; u++) {
      const int e0 = (int)max64(0, pw - u), e1 = (int)min64(kw, (int64_t)w + pw - u);
      dw_voxel(out + (int64_t)u * c, base + (int64_t)(u - pw) * c, f, c, sz, sy, kh, kw, a0, a1,
               b0, b1, e0, e1);
    }
  }
  free(flipped);
  return 0;
}

/*
 * The gradient with respect to the filter: df[a,b,e,ch] = Σ_{n,z,y,u} x[n, z+a-pd, y+b-ph,
 * u+e-pw, ch] · dy[n,z,y,u,ch]. Each thread sums its rows in a float buffer per row, adds that
 * into its own double buffer, and the threads' buffers are added in order at the end. Returns 0,
 * or -1 when memory ran out.
 */
EXPORT int32_t rev_dwconv3d_filter_grad(const float *restrict x, const float *restrict dy,
                                     float *restrict df, int32_t n, int32_t d, int32_t h,
                                     int32_t w, int32_t c, int32_t kd, int32_t kh, int32_t kw) {
  const int64_t taps = (int64_t)kd * kh * kw, fsize = taps * c;
  const int pd = (kd - 1) / 2, ph = (kh - 1) / 2, pw = (kw - 1) / 2;
  const int64_t sy = (int64_t)w * c, sz = (int64_t)h * sy, sn = (int64_t)d * sz;
  const int64_t rows = (int64_t)n * d * h;
  const int nt = omp_get_max_threads();
  double *partial = calloc((size_t)nt * fsize, sizeof(double));
  float *rowbuf = malloc(sizeof(float) * (size_t)nt * fsize);
  if (!partial || !rowbuf) {
    free(partial);
    free(rowbuf);
    return -1;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), parts = omp_get_num_threads();
    int64_t lo, hi;
    split_range(rows, t, parts, &lo, &hi);
    double *acc = partial + t * fsize;
    float *racc = rowbuf + t * fsize;
    for (int64_t r = lo; r < hi; r++) {
      const int64_t i = r / ((int64_t)d * h);
      const int z = (int)((r / h) % d), yy = (int)(r % h);
      const int a0 = (int)max64(0, pd - z), a1 = (int)min64(kd, (int64_t)d + pd - z);
      const int b0 = (int)max64(0, ph - yy), b1 = (int)min64(kh, (int64_t)h + ph - yy);
      const float *g = dy + i * sn + z * sz + yy * sy;
      const float *base = x + i * sn + (int64_t)(z - pd) * sz + (int64_t)(yy - ph) * sy;
      memset(racc, 0, sizeof(float) * fsize);
      for (int u = 0; u < w; u++) {
        const int e0 = (int)max64(0, pw - u), e1 = (int)min64(kw, (int64_t)w + pw - u);
        const float *restrict gp = g + (int64_t)u * c;
        const float *xv = base + (int64_t)(u - pw) * c;
        for (int a = a0; a < a1; a++) {
          for (int b = b0; b < b1; b++) {
            const float *xr = xv + a * sz + b * sy;
            float *fr = racc + ((int64_t)(a * kh + b) * kw) * c;
            for (int e = e0; e < e1; e++) {
              const float *restrict xp = xr + e * c;
              float *restrict fp = fr + e * c;
              for (int64_t ch = 0; ch < c; ch++) fp[ch] += xp[ch] * gp[ch];
            }
          }
        }
      }
      for (int64_t k = 0; k < fsize; k++) acc[k] += racc[k];
    }
  }
  for (int64_t k = 0; k < fsize; k++) {
    double s = 0;
    for (int t = 0; t < nt; t++) s += partial[t * fsize + k];
    df[k] = (float)s;
  }
  free(partial);
  free(rowbuf);
  return 0;
}

/* ---- GroupNorm + activation ------------------------------------------------------------------ */

static inline float activate(float v, int act) {
  if (act == ACT_RELU) return v > 0.0f ? v : 0.0f;
  if (act == ACT_RELU6) return v > 0.0f ? (v < 6.0f ? v : 6.0f) : 0.0f;
  return v;
}

/* Whether the activation passes the gradient at `v`: tfjs's Relu and Relu6 gradient convention. */
static inline float passes(float v, int act) {
  if (act == ACT_RELU) return v > 0.0f ? 1.0f : 0.0f;
  if (act == ACT_RELU6) return (v > 0.0f && v <= 6.0f) ? 1.0f : 0.0f;
  return 1.0f;
}

/*
 * Per-channel sums over the voxels of one sample: out[ch] = Σ_v f(v, ch), where `kind` 0 sums
 * x and kind 1 sums (x - centre[ch])². Threads take contiguous voxel ranges; `partial` holds
 * nt·c doubles.
 */
static void channel_sums(const float *restrict x, int64_t voxels, int64_t c, int kind,
                         const float *restrict centre, double *restrict partial, int nt,
                         double *restrict out) {
  /* Blocks of voxels are summed in float (vectorized over the channels), then added into the
   * double accumulators: a float sum of 64 terms loses nothing that matters, and the inner loop
   * no longer converts every element to double. */
  enum { BLOCK = 64 };
  memset(partial, 0, sizeof(double) * (size_t)nt * c);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), parts = omp_get_num_threads();
    int64_t lo, hi;
    split_range(voxels, t, parts, &lo, &hi);
    double *restrict acc = partial + t * c;
    float blk[c];
    for (int64_t v0 = lo; v0 < hi; v0 += BLOCK) {
      const int64_t v1 = min64(v0 + BLOCK, hi);
      for (int64_t ch = 0; ch < c; ch++) blk[ch] = 0.0f;
      if (kind == 0) {
        for (int64_t v = v0; v < v1; v++) {
          const float *restrict xv = x + v * c;
          for (int64_t ch = 0; ch < c; ch++) blk[ch] += xv[ch];
        }
      } else {
        for (int64_t v = v0; v < v1; v++) {
          const float *restrict xv = x + v * c;
          for (int64_t ch = 0; ch < c; ch++) {
            const float e = xv[ch] - centre[ch];
            blk[ch] += e * e;
          }
        }
      }
      for (int64_t ch = 0; ch < c; ch++) acc[ch] += blk[ch];
    }
  }
  for (int64_t ch = 0; ch < c; ch++) {
    double s = 0;
    for (int t = 0; t < nt; t++) s += partial[t * c + ch];
    out[ch] = s;
  }
}

/* Sums a per-channel vector over the channels of each group: out[g] = Σ_{ch in g} v[ch]. */
static void group_sums(const double *v, int64_t c, int groups, double *out) {
  const int64_t per = c / groups;
  for (int g = 0; g < groups; g++) {
    double s = 0;
    for (int64_t k = 0; k < per; k++) s += v[g * per + k];
    out[g] = s;
  }
}

/*
 * y = act(gamma · (x - mean_g) · rstd_g + beta), statistics per sample and group over the voxels
 * and the group's channels (biased variance, two passes: mean, then centred squares). Writes
 * mean and rstd ([n, groups]) for the backward pass. Returns 0, or -1 when memory ran out.
 */
EXPORT int32_t rev_group_norm(const float *restrict x, const float *restrict gamma,
                              const float *restrict beta, float *restrict y, float *restrict mean,
                              float *restrict rstd, int32_t n, int64_t voxels, int32_t c,
                              int32_t groups, float epsilon, int32_t act) {
  const int nt = omp_get_max_threads();
  const int64_t per = c / groups;
  const double count = (double)voxels * per;
  double *partial = malloc(sizeof(double) * (size_t)nt * c);
  double *sums = malloc(sizeof(double) * c);
  double *gsum = malloc(sizeof(double) * groups);
  float *centre = malloc(sizeof(float) * c);
  float *scale = malloc(sizeof(float) * c);
  float *shift = malloc(sizeof(float) * c);
  int32_t rc = 0;
  if (!partial || !sums || !gsum || !centre || !scale || !shift) {
    rc = -1;
    goto done;
  }
  for (int i = 0; i < n; i++) {
    const float *xi = x + (int64_t)i * voxels * c;
    float *yi = y + (int64_t)i * voxels * c;
    channel_sums(xi, voxels, c, 0, NULL, partial, nt, sums);
    group_sums(sums, c, groups, gsum);
    for (int g = 0; g < groups; g++) mean[i * groups + g] = (float)(gsum[g] / count);
    for (int64_t ch = 0; ch < c; ch++) centre[ch] = mean[i * groups + ch / per];
    channel_sums(xi, voxels, c, 1, centre, partial, nt, sums);
    group_sums(sums, c, groups, gsum);
    for (int g = 0; g < groups; g++) {
      rstd[i * groups + g] = (float)(1.0 / sqrt(gsum[g] / count + (double)epsilon));
    }
    /* The pre-activation as x·scale + shift, the same expression the backward pass masks on. */
    for (int64_t ch = 0; ch < c; ch++) {
      scale[ch] = gamma[ch] * rstd[i * groups + ch / per];
      shift[ch] = beta[ch] - centre[ch] * scale[ch];
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t v = 0; v < voxels; v++) {
      const float *restrict xv = xi + v * c;
      float *restrict yv = yi + v * c;
      /* One loop per activation, so that each vectorizes without a branch per element. */
      if (act == ACT_RELU6) {
        for (int64_t ch = 0; ch < c; ch++) {
          const float p = xv[ch] * scale[ch] + shift[ch];
          yv[ch] = p > 0.0f ? (p < 6.0f ? p : 6.0f) : 0.0f;
        }
      } else if (act == ACT_RELU) {
        for (int64_t ch = 0; ch < c; ch++) {
          const float p = xv[ch] * scale[ch] + shift[ch];
          yv[ch] = p > 0.0f ? p : 0.0f;
        }
      } else {
        for (int64_t ch = 0; ch < c; ch++) yv[ch] = xv[ch] * scale[ch] + shift[ch];
      }
    }
  }
done:
  free(partial);
  free(sums);
  free(gsum);
  free(centre);
  free(scale);
  free(shift);
  return rc;
}

/*
 * The analytic gradient of rev_group_norm, per sample, with g = dy masked by the activation's
 * derivative, x̂ = (x - mean)·rstd and sums over a group's voxels and channels (N values):
 *
 *     dbeta  = Σ_voxels g          dgamma = Σ_voxels g·x̂          (summed over samples)
 *     dx     = rstd·(gamma·g - A/N - x̂·B/N),   A = Σ gamma·g,   B = Σ gamma·g·x̂
 *
 * Two passes over x and dy: the sums, then dx. Returns 0, or -1 when memory ran out.
 */
EXPORT int32_t rev_group_norm_grad(const float *restrict dy, const float *restrict x,
                                   const float *restrict gamma, const float *restrict beta,
                                   const float *restrict mean, const float *restrict rstd,
                                   float *restrict dx, float *restrict dgamma,
                                   float *restrict dbeta, int32_t n, int64_t voxels, int32_t c,
                                   int32_t groups, int32_t act) {
  const int nt = omp_get_max_threads();
  const int64_t per = c / groups;
  const double count = (double)voxels * per;
  double *partial = malloc(sizeof(double) * (size_t)nt * 2 * c);
  double *sumG = malloc(sizeof(double) * c);
  double *sumGC = malloc(sizeof(double) * c);
  double *dg = calloc(c, sizeof(double));
  double *db = calloc(c, sizeof(double));
  float *centre = malloc(sizeof(float) * c);
  float *scale = malloc(sizeof(float) * c);
  float *shift = malloc(sizeof(float) * c);
  float *k1 = malloc(sizeof(float) * c);
  float *k2 = malloc(sizeof(float) * c);
  float *k3 = malloc(sizeof(float) * c);
  int32_t rc = 0;
  if (!partial || !sumG || !sumGC || !dg || !db || !centre || !scale || !shift || !k1 || !k2 ||
      !k3) {
    rc = -1;
    goto done;
  }
  for (int i = 0; i < n; i++) {
    const int64_t off = (int64_t)i * voxels * c;
    const float *xi = x + off, *dyi = dy + off;
    float *dxi = dx + off;
    for (int64_t ch = 0; ch < c; ch++) {
      const float r = rstd[i * groups + ch / per];
      centre[ch] = mean[i * groups + ch / per];
      scale[ch] = gamma[ch] * r;
      shift[ch] = beta[ch] - centre[ch] * scale[ch];
    }
    memset(partial, 0, sizeof(double) * (size_t)nt * 2 * c);
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), parts = omp_get_num_threads();
      int64_t lo, hi;
      split_range(voxels, t, parts, &lo, &hi);
      double *restrict aG = partial + (int64_t)t * 2 * c;
      double *restrict aGC = aG + c;
      for (int64_t v = lo; v < hi; v++) {
        const float *restrict xv = xi + v * c;
        const float *restrict gv = dyi + v * c;
        for (int64_t ch = 0; ch < c; ch++) {
          const float g = gv[ch] * passes(xv[ch] * scale[ch] + shift[ch], act);
          aG[ch] += g;
          aGC[ch] += (double)(g * (xv[ch] - centre[ch]));
        }
      }
    }
    for (int64_t ch = 0; ch < c; ch++) {
      double s = 0, sc = 0;
      for (int t = 0; t < nt; t++) {
        s += partial[(int64_t)t * 2 * c + ch];
        sc += partial[(int64_t)t * 2 * c + c + ch];
      }
      sumG[ch] = s;
      sumGC[ch] = sc * rstd[i * groups + ch / per]; /* Σ g·x̂: this sample's dgamma */
      db[ch] += sumG[ch];
      dg[ch] += sumGC[ch];
    }
    for (int g = 0; g < groups; g++) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < per; k++) {
        a += gamma[g * per + k] * sumG[g * per + k];
        b += gamma[g * per + k] * sumGC[g * per + k];
      }
      const double r = rstd[i * groups + g];
      /* dx = g·(gamma·rstd) + (x - mean)·(-rstd²·B/N) + (-rstd·A/N) */
      for (int64_t k = 0; k < per; k++) {
        const int64_t ch = g * per + k;
        k1[ch] = (float)(gamma[ch] * r);
        k2[ch] = (float)(-r * r * b / count);
        k3[ch] = (float)(-r * a / count);
      }
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t v = 0; v < voxels; v++) {
      const float *restrict xv = xi + v * c;
      const float *restrict gv = dyi + v * c;
      float *restrict out = dxi + v * c;
      for (int64_t ch = 0; ch < c; ch++) {
        const float g = gv[ch] * passes(xv[ch] * scale[ch] + shift[ch], act);
        out[ch] = g * k1[ch] + (xv[ch] - centre[ch]) * k2[ch] + k3[ch];
      }
    }
  }
  for (int64_t ch = 0; ch < c; ch++) {
    dgamma[ch] = (float)dg[ch];
    dbeta[ch] = (float)db[ch];
  }
done:
  free(partial);
  free(sumG);
  free(sumGC);
  free(dg);
  free(db);
  free(centre);
  free(scale);
  free(shift);
  free(k1);
  free(k2);
  free(k3);
  return rc;
}

/* ---- dense conv3d (the stem and the downsampling convolutions) ------------------------------- */

/*
 * Geometry of a dense 3D convolution, channel-last, dilation 1: x [n, d, h, w, ci], filter
 * [kd, kh, kw, ci, co], y [n, od, oh, ow, co], output voxel o reading input o·stride - pad + tap.
 */
typedef struct {
  int32_t n, d, h, w, ci, od, oh, ow, co, kd, kh, kw, sd, sh, sw, pf, pt, pl;
} conv_geom;

/* The taps [*t0, *t1) of one axis that land inside [0, size) for output coordinate o. */
static inline void tap_range(int o, int stride, int pad, int k, int size, int *t0, int *t1) {
  const int start = o * stride - pad;
  *t0 = start < 0 ? -start : 0;
  *t1 = size - start < k ? size - start : k;
  if (*t1 < *t0) *t1 = *t0;
}

/* y = conv(x, filter); rows (n, od, oh) split over threads, each output voxel summed over its
 * valid taps and input channels with the output channels as the vector axis. */
EXPORT int32_t rev_conv3d(const float *restrict x, const float *restrict f, float *restrict y,
                          const conv_geom *g) {
  const int64_t xsy = (int64_t)g->w * g->ci, xsz = (int64_t)g->h * xsy, xsn = (int64_t)g->d * xsz;
  const int64_t rows = (int64_t)g->n * g->od * g->oh;
  const int64_t co = g->co, ci = g->ci;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const int i = (int)(r / ((int64_t)g->od * g->oh));
    const int oz = (int)((r / g->oh) % g->od), oy = (int)(r % g->oh);
    int a0, a1, b0, b1;
    tap_range(oz, g->sd, g->pf, g->kd, g->d, &a0, &a1);
    tap_range(oy, g->sh, g->pt, g->kh, g->h, &b0, &b1);
    float *out = y + r * (int64_t)g->ow * co;
    memset(out, 0, sizeof(float) * g->ow * co);
    for (int ox = 0; ox < g->ow; ox++) {
      int e0, e1;
      tap_range(ox, g->sw, g->pl, g->kw, g->w, &e0, &e1);
      float *restrict acc = out + (int64_t)ox * co;
      for (int a = a0; a < a1; a++) {
        for (int b = b0; b < b1; b++) {
          for (int e = e0; e < e1; e++) {
            const float *xv = x + i * xsn + (int64_t)(oz * g->sd - g->pf + a) * xsz +
                              (int64_t)(oy * g->sh - g->pt + b) * xsy +
                              (int64_t)(ox * g->sw - g->pl + e) * ci;
            const float *fw = f + (((int64_t)a * g->kh + b) * g->kw + e) * ci * co;
            for (int64_t c = 0; c < ci; c++) {
              const float v = xv[c];
              const float *restrict wr = fw + c * co;
              for (int64_t k = 0; k < co; k++) acc[k] += v * wr[k];
            }
          }
        }
      }
    }
  }
  return 0;
}

/* df[a,b,e,ci,co] = Σ x[input voxel of (o, tap), ci] · dy[o, co]: per-row float sums added into
 * per-thread double buffers, reduced in thread order. */
EXPORT int32_t rev_conv3d_filter_grad(const float *restrict x, const float *restrict dy,
                                      float *restrict df, const conv_geom *g) {
  const int64_t xsy = (int64_t)g->w * g->ci, xsz = (int64_t)g->h * xsy, xsn = (int64_t)g->d * xsz;
  const int64_t rows = (int64_t)g->n * g->od * g->oh;
  const int64_t co = g->co, ci = g->ci;
  const int64_t fsize = (int64_t)g->kd * g->kh * g->kw * ci * co;
  const int nt = omp_get_max_threads();
  double *partial = calloc((size_t)nt * fsize, sizeof(double));
  float *rowbuf = malloc(sizeof(float) * (size_t)nt * fsize);
  if (!partial || !rowbuf) {
    free(partial);
    free(rowbuf);
    return -1;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), parts = omp_get_num_threads();
    int64_t lo, hi;
    split_range(rows, t, parts, &lo, &hi);
    double *acc = partial + t * fsize;
    float *racc = rowbuf + t * fsize;
    for (int64_t r = lo; r < hi; r++) {
      const int i = (int)(r / ((int64_t)g->od * g->oh));
      const int oz = (int)((r / g->oh) % g->od), oy = (int)(r % g->oh);
      int a0, a1, b0, b1;
      tap_range(oz, g->sd, g->pf, g->kd, g->d, &a0, &a1);
      tap_range(oy, g->sh, g->pt, g->kh, g->h, &b0, &b1);
      memset(racc, 0, sizeof(float) * fsize);
      for (int ox = 0; ox < g->ow; ox++) {
        int e0, e1;
        tap_range(ox, g->sw, g->pl, g->kw, g->w, &e0, &e1);
        const float *restrict gv = dy + (r * g->ow + ox) * co;
        for (int a = a0; a < a1; a++) {
          for (int b = b0; b < b1; b++) {
            for (int e = e0; e < e1; e++) {
              const float *xv = x + i * xsn + (int64_t)(oz * g->sd - g->pf + a) * xsz +
                                (int64_t)(oy * g->sh - g->pt + b) * xsy +
                                (int64_t)(ox * g->sw - g->pl + e) * ci;
              float *fw = racc + (((int64_t)a * g->kh + b) * g->kw + e) * ci * co;
              for (int64_t c = 0; c < ci; c++) {
                const float v = xv[c];
                float *restrict wr = fw + c * co;
                for (int64_t k = 0; k < co; k++) wr[k] += v * gv[k];
              }
            }
          }
        }
      }
      for (int64_t k = 0; k < fsize; k++) acc[k] += racc[k];
    }
  }
  for (int64_t k = 0; k < fsize; k++) {
    double s = 0;
    for (int t = 0; t < nt; t++) s += partial[t * fsize + k];
    df[k] = (float)s;
  }
  free(partial);
  free(rowbuf);
  return 0;
}

/* dx[z,y,u,ci] = Σ over taps whose output voxel o = (input + pad - tap)/stride is whole and in
 * range of Σ_co filter[tap, ci, co] · dy[o, co]. Gathered per input row (no write conflicts),
 * with the filter transposed to [tap, co, ci] so the input channels are the vector axis. */
EXPORT int32_t rev_conv3d_input_grad(const float *restrict dy, const float *restrict f,
                                     float *restrict dx, const conv_geom *g) {
  const int64_t co = g->co, ci = g->ci, taps = (int64_t)g->kd * g->kh * g->kw;
  float *ft = malloc(sizeof(float) * taps * ci * co);
  if (!ft) return -1;
  for (int64_t t = 0; t < taps; t++)
    for (int64_t c = 0; c < ci; c++)
      for (int64_t k = 0; k < co; k++) ft[(t * co + k) * ci + c] = f[(t * ci + c) * co + k];
  const int64_t gsy = (int64_t)g->ow * co, gsz = (int64_t)g->oh * gsy, gsn = (int64_t)g->od * gsz;
  const int64_t rows = (int64_t)g->n * g->d * g->h;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const int i = (int)(r / ((int64_t)g->d * g->h));
    const int z = (int)((r / g->h) % g->d), yy = (int)(r % g->h);
    float *out = dx + r * (int64_t)g->w * ci;
    memset(out, 0, sizeof(float) * g->w * ci);
    for (int a = 0; a < g->kd; a++) {
      const int nz = z + g->pf - a;
      if (nz < 0 || nz % g->sd != 0 || nz / g->sd >= g->od) continue;
      for (int b = 0; b < g->kh; b++) {
        const int ny = yy + g->pt - b;
        if (ny < 0 || ny % g->sh != 0 || ny / g->sh >= g->oh) continue;
        const float *grow = dy + i * gsn + (int64_t)(nz / g->sd) * gsz + (int64_t)(ny / g->sh) * gsy;
        for (int u = 0; u < g->w; u++) {
          float *restrict acc = out + (int64_t)u * ci;
          for (int e = 0; e < g->kw; e++) {
            const int nx = u + g->pl - e;
            if (nx < 0 || nx % g->sw != 0 || nx / g->sw >= g->ow) continue;
            const float *gv = grow + (int64_t)(nx / g->sw) * co;
            const float *fw = ft + (((int64_t)a * g->kh + b) * g->kw + e) * co * ci;
            for (int64_t k = 0; k < co; k++) {
              const float v = gv[k];
              const float *restrict wr = fw + k * ci;
              for (int64_t c = 0; c < ci; c++) acc[c] += v * wr[c];
            }
          }
        }
      }
    }
  }
  free(ft);
  return 0;
}
