//! A plotters drawing backend that draws text with `ab_glyph` and the embedded DejaVu Sans,
//! and hands every other call to the bitmap backend unchanged. plotters' own `ab_glyph` text
//! path places each glyph at the left edge of its advance (dropping the side bearing), which
//! leaves gaps after narrow glyphs ("1 e-3") and shifts dots; this one positions glyphs as
//! the font says, with kerning, and honours the anchor and rotation of the text style.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use anyhow::{anyhow, Result};
use plotters::prelude::{BitMapBackend, DrawingBackend};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};
use plotters_bitmap::BitMapBackendError;

/// DejaVu Sans 2.37 (see `fonts/LICENSE-DejaVu.txt`).
pub static DEJAVU_SANS: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// The bitmap backend with text drawn by `ab_glyph` directly (see the module docs). Every
/// other drawing call goes to the bitmap backend unchanged.
pub struct TextBackend<'a> {
    inner: BitMapBackend<'a>,
    font: FontRef<'static>,
}

type BackendResult = Result<(), DrawingErrorKind<BitMapBackendError>>;

impl<'a> TextBackend<'a> {
    /// Draws into `rgb` (`w·h·3` bytes, row-major RGB).
    pub fn new(rgb: &'a mut [u8], (w, h): (u32, u32)) -> Result<TextBackend<'a>> {
        let font = FontRef::try_from_slice(DEJAVU_SANS)
            .map_err(|e| anyhow!("the embedded DejaVu Sans font does not load: {e}"))?;
        Ok(TextBackend {
            inner: BitMapBackend::with_buffer(rgb, (w, h)),
            font,
        })
    }

    /// Glyphs of `text` with their pen x positions (kerned), the advance width, and the
    /// font's ascent and descent (descent negative), all in pixels at `size`.
    fn layout(&self, text: &str, size: f64) -> (Vec<(ab_glyph::GlyphId, f32)>, f32, f32, f32) {
        let sf = self.font.as_scaled(PxScale::from(size as f32));
        let mut glyphs = Vec::with_capacity(text.len());
        let mut x = 0.0f32;
        let mut prev = None;
        for c in text.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                x += sf.kern(p, id);
            }
            glyphs.push((id, x));
            x += sf.h_advance(id);
            prev = Some(id);
        }
        (glyphs, x, sf.ascent(), sf.descent())
    }
}

impl DrawingBackend for TextBackend<'_> {
    type ErrorType = BitMapBackendError;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> BackendResult {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> BackendResult {
        self.inner.present()
    }
    fn draw_pixel(&mut self, p: BackendCoord, c: BackendColor) -> BackendResult {
        self.inner.draw_pixel(p, c)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
    ) -> BackendResult {
        self.inner.draw_line(a, b, s)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
        fill: bool,
    ) -> BackendResult {
        self.inner.draw_rect(a, b, s, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        s: &S,
    ) -> BackendResult {
        self.inner.draw_path(path, s)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        c: BackendCoord,
        r: u32,
        s: &S,
        fill: bool,
    ) -> BackendResult {
        self.inner.draw_circle(c, r, s, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        s: &S,
    ) -> BackendResult {
        self.inner.fill_polygon(vert, s)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> BackendResult {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<BitMapBackendError>> {
        let (_, w, asc, desc) = self.layout(text, style.size());
        Ok((w.ceil() as u32, (asc - desc).ceil() as u32))
    }

    /// The anchor point is placed on the text's box (advance width × ascent−descent) as
    /// the style's anchor says, and the box is rotated about it by the style's transform.
    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> BackendResult {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let size = style.size();
        let (glyphs, width, asc, desc) = self.layout(text, size);
        let height = asc - desc;
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -height / 2.0,
            VPos::Bottom => -height,
        };
        let trans = style.transform();
        let scale = PxScale::from(size as f32);
        let mut pixels: Vec<(BackendCoord, f32)> = Vec::new();
        for (id, x) in glyphs {
            let g = id.with_scale_and_position(scale, point(x + dx, asc + dy));
            if let Some(og) = self.font.outline_glyph(g) {
                let b = og.px_bounds();
                og.draw(|px, py, coverage| {
                    if coverage > 0.0 {
                        let (lx, ly) = (b.min.x as i32 + px as i32, b.min.y as i32 + py as i32);
                        let (tx, ty) = trans.transform(lx, ly);
                        pixels.push(((pos.0 + tx, pos.1 + ty), coverage.min(1.0)));
                    }
                });
            }
        }
        for (p, coverage) in pixels {
            self.inner.draw_pixel(
                p,
                BackendColor {
                    alpha: color.alpha * coverage as f64,
                    rgb: color.rgb,
                },
            )?;
        }
        Ok(())
    }
}
