// The renderer of consr_world: integer arithmetic only (no libm, no floating point in the pixels),
// so an image is the same bytes everywhere.
#include <algorithm>
#include <cstdlib>

#include "consr_world/world.hpp"

namespace consr_world {

namespace {

// 5 x 7 bitmap digits, one byte per row, bit 4 = leftmost column.
constexpr std::uint8_t font[10][7] = {
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E},  // 0
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},  // 1
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F},  // 2
    {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},  // 3
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02},  // 4
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},  // 5
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E},  // 6
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},  // 7
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E},  // 8
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},  // 9
};

// A five-pointed star: outer points at -90 + 72k degrees, inner points (radius 0.42) between
// them, as (x, y) * 1000, y pointing down; polygon order alternates outer / inner.
constexpr int star_unit[10][2] = {
    {0, -1000}, {247, -340}, {951, -309}, {399, 130}, {588, 809},
    {0, 420},   {-588, 809}, {-399, 130}, {-951, -309}, {-247, -340},
};

using i64 = std::int64_t;

i64 cross(i64 ax, i64 ay, i64 bx, i64 by, i64 px, i64 py) { return (bx - ax) * (py - ay) - (by - ay) * (px - ax); }

bool in_triangle(i64 ax, i64 ay, i64 bx, i64 by, i64 cx, i64 cy, i64 px, i64 py) {
  const i64 d1 = cross(ax, ay, bx, by, px, py);
  const i64 d2 = cross(bx, by, cx, cy, px, py);
  const i64 d3 = cross(cx, cy, ax, ay, px, py);
  const bool neg = d1 < 0 || d2 < 0 || d3 < 0;
  const bool pos = d1 > 0 || d2 > 0 || d3 > 0;
  return !(neg && pos);
}

// Is the sample (dx, dy) (quarter pixels, relative to the centre) inside the shape of radius r
// (quarter pixels)?
bool inside(shape s, i64 r, i64 dx, i64 dy) {
  const i64 d2 = dx * dx + dy * dy;
  switch (s) {
    case shape::circle: return d2 <= r * r;
    case shape::square: {
      const i64 h = r * 4 / 5;
      return std::llabs(dx) <= h && std::llabs(dy) <= h;
    }
    case shape::triangle: {
      const i64 top = -r, base = r * 3 / 4, half = r * 9 / 10;
      return in_triangle(0, top, half, base, -half, base, dx, dy);
    }
    case shape::star: {
      for (int k = 0; k < 10; ++k) {
        const int n = (k + 1) % 10;
        if (in_triangle(0, 0, star_unit[k][0] * r / 1000, star_unit[k][1] * r / 1000, star_unit[n][0] * r / 1000,
                        star_unit[n][1] * r / 1000, dx, dy))
          return true;
      }
      return false;
    }
    case shape::cross: {
      const i64 arm = r * 9 / 10, w = r * 3 / 10;
      const i64 ax = std::llabs(dx), ay = std::llabs(dy);
      return (ax <= arm && ay <= w) || (ay <= arm && ax <= w);
    }
    case shape::ring: {
      const i64 inner = r * 11 / 20;
      return d2 <= r * r && d2 >= inner * inner;
    }
  }
  return false;
}

int clamp255(int v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

}  // namespace

image render(const scene& sc) {
  image img;
  const int W = img.width, H = img.height;
  img.rgb.assign(static_cast<std::size_t>(W) * H * 3, 0);
  std::vector<int> buf(static_cast<std::size_t>(W) * H * 3);

  // Background: a tinted grey, stripes (an integer triangle wave), per-pixel noise.
  rng br(mix64(sc.key ^ 0xB4C0FFEE0BADF00Dull));
  const int grey = 70 + static_cast<int>(br.below(50));
  int base[3];
  for (int& b : base) b = grey + static_cast<int>(br.below(31)) - 15;
  const int orientation = static_cast<int>(br.below(4));
  const int period = 6 + static_cast<int>(br.below(10));
  const int amplitude = 3 + static_cast<int>(br.below(7));
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const int coord = orientation == 0 ? y : orientation == 1 ? x : orientation == 2 ? x + y : x - y + 2 * W;
      const int u = coord % period;
      const int tri = std::abs(2 * u - period);  // 0..period
      const int stripe = tri * 2 * amplitude / period - amplitude;
      const std::uint64_t h = mix64(sc.key + 0x632BE59BD9B4E019ull * static_cast<std::uint64_t>(y * W + x + 1));
      const int mono = static_cast<int>(h & 15) - 8;
      for (int c = 0; c < 3; ++c) {
        const int chan = static_cast<int>((h >> (8 + 4 * c)) & 7) - 4;
        buf[(static_cast<std::size_t>(y) * W + x) * 3 + c] = base[c] + stripe + mono + chan;
      }
    }

  // Clutter: thin low-contrast line segments and faint blobs.
  const int lines = 3 + static_cast<int>(br.below(6));
  for (int l = 0; l < lines; ++l) {
    const int x0 = static_cast<int>(br.below(W)), y0 = static_cast<int>(br.below(H));
    const int x1 = static_cast<int>(br.below(W)), y1 = static_cast<int>(br.below(H));
    const int contrast = (br.chance(0.5) ? 1 : -1) * (10 + static_cast<int>(br.below(16)));
    const int steps = std::max(std::abs(x1 - x0), std::abs(y1 - y0));
    for (int i = 0; i <= steps; ++i) {
      const int x = steps ? x0 + (x1 - x0) * i / steps : x0;
      const int y = steps ? y0 + (y1 - y0) * i / steps : y0;
      for (int c = 0; c < 3; ++c) buf[(static_cast<std::size_t>(y) * W + x) * 3 + c] += contrast;
    }
  }
  const int blobs = 2 + static_cast<int>(br.below(4));
  for (int b = 0; b < blobs; ++b) {
    const int bx = static_cast<int>(br.below(W)), by = static_cast<int>(br.below(H));
    const int rad = 3 + static_cast<int>(br.below(6));
    const int contrast = (br.chance(0.5) ? 1 : -1) * (6 + static_cast<int>(br.below(10)));
    for (int y = std::max(0, by - rad); y <= std::min(H - 1, by + rad); ++y)
      for (int x = std::max(0, bx - rad); x <= std::min(W - 1, bx + rad); ++x)
        if ((x - bx) * (x - bx) + (y - by) * (y - by) <= rad * rad)
          for (int c = 0; c < 3; ++c) buf[(static_cast<std::size_t>(y) * W + x) * 3 + c] += contrast;
  }

  // Objects: 2 x 2 supersampled coverage in quarter-pixel units, blended over the background.
  for (std::size_t i = 0; i < sc.objects.size(); ++i) {
    const object& o = sc.objects[i];
    rng orng(mix64(sc.key ^ (0xD1B54A32D192ED03ull * (i + 1))));
    const auto base_rgb = rgb(o.c);
    int col[3];
    for (int c = 0; c < 3; ++c) col[c] = clamp255(base_rgb[c] + static_cast<int>(orng.below(21)) - 10);
    const int radius_px = o.size == size_class::large ? 14 : 8;
    const i64 r = radius_px * 4;
    for (int y = std::max(0, o.cy - radius_px - 1); y <= std::min(H - 1, o.cy + radius_px + 1); ++y)
      for (int x = std::max(0, o.cx - radius_px - 1); x <= std::min(W - 1, o.cx + radius_px + 1); ++x) {
        int cover = 0;
        for (int sy = 0; sy < 2; ++sy)
          for (int sx = 0; sx < 2; ++sx) {
            const i64 dx = 4 * x + 1 + 2 * sx - 4 * o.cx, dy = 4 * y + 1 + 2 * sy - 4 * o.cy;
            cover += inside(o.s, r, dx, dy);
          }
        if (!cover) continue;
        for (int c = 0; c < 3; ++c) {
          int& v = buf[(static_cast<std::size_t>(y) * W + x) * 3 + c];
          v = (clamp255(v) * (4 - cover) + col[c] * cover + 2) / 4;
        }
      }
  }

  // The digit: the 5 x 7 font scaled x3, centred in its corner cell, white on dark backgrounds.
  if (sc.digit >= 0 && sc.digit <= 9) {
    const int scale = 3;
    const int cell_px = image_size / grid;
    const int cx = (sc.digit_cell % grid) * cell_px + cell_px / 2 + 1;
    const int cy = (sc.digit_cell / grid) * cell_px + cell_px / 2 + 1;
    const int x0 = cx - 5 * scale / 2, y0 = cy - 7 * scale / 2;
    const int ink = grey >= 100 ? 15 : 245;
    for (int row = 0; row < 7; ++row)
      for (int colm = 0; colm < 5; ++colm) {
        if (!((font[sc.digit][row] >> (4 - colm)) & 1)) continue;
        for (int yy = 0; yy < scale; ++yy)
          for (int xx = 0; xx < scale; ++xx) {
            const int x = x0 + colm * scale + xx, y = y0 + row * scale + yy;
            if (x < 0 || y < 0 || x >= W || y >= H) continue;
            for (int c = 0; c < 3; ++c) buf[(static_cast<std::size_t>(y) * W + x) * 3 + c] = ink;
          }
      }
  }

  for (std::size_t i = 0; i < buf.size(); ++i) img.rgb[i] = static_cast<std::uint8_t>(clamp255(buf[i]));
  return img;
}

}  // namespace consr_world
