//! A small SVG line chart of freeze time against memory size.

/// (MiB, plain CRIU frozen ms, selfdump frozen ms, selfdump blocked ms).
type Point = (usize, f64, f64, f64);

/// One line of the chart: its name, colour and value at a point.
type Series = (&'static str, &'static str, fn(&Point) -> f64);

pub fn freeze_svg(points: &[Point]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 70.0, 50.0, 40.0, 20.0);
    let max_x = points.iter().map(|p| p.0 as f64).fold(1.0, f64::max);
    let max_y = points
        .iter()
        .flat_map(|p| [p.1, p.2, p.3])
        .fold(1.0, f64::max)
        * 1.1;
    let x = |mib: f64| left + (w - left - right) * mib / max_x;
    let y = |ms: f64| h - bottom - (h - bottom - top) * ms / max_y;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Freeze time against memory size</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">touched memory (MiB)</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">ms</text>\n",
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (left + w - right) / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=4 {
        let v = max_y * i as f64 / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text><line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#ddd\"/>\n",
            left - 6.0,
            y(v) + 4.0,
            y(v),
            w - right,
            y(v)
        );
    }
    for p in points {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(p.0 as f64),
            h - bottom + 16.0,
            p.0
        );
    }
    let series: [Series; 3] = [
        ("plain CRIU: frozen (CRIU stats)", "#1f77b4", |p| p.1),
        ("selfdump: frozen (CRIU stats)", "#d62728", |p| p.2),
        (
            "selfdump: app blocked (measured in the app)",
            "#ff7f0e",
            |p| p.3,
        ),
    ];
    for (i, (name, color, value)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0 as f64), y(value(p))))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for p in points {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                x(p.0 as f64),
                y(value(p))
            );
        }
        let ly = top + 8.0 + 16.0 * i as f64;
        svg += &format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            left + 12.0,
            left + 32.0,
            left + 38.0,
            ly + 4.0
        );
    }
    svg + "</svg>\n"
}
