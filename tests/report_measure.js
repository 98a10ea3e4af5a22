// What a rendered guestmem report says about itself (tests/test_report.py).
(() => {
  const rgb = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const background = (el) => { for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor); if (c && c[3] > 0.5) return c; } return [255, 255, 255, 1]; };
  const shown = (el) => { const r = el.getBoundingClientRect();
    return el.checkVisibility({ visibilityProperty: true, opacityProperty: true }) && r.width > 0 && r.height > 0; };
  const out = { maps: [], overflow: [], contrast: [], checked: 0, cells: 0 };
  for (const t of document.querySelectorAll('table.map')) {
    const r = t.getBoundingClientRect(); const d = t.closest('details');
    out.maps.push({ label: t.getAttribute('aria-label'), visible: shown(t), width: r.width, height: r.height,
      open: d ? d.open : true, pages: t.querySelectorAll('td.page').length });
  }
  const boxes = document.querySelectorAll('td, th, .swatch, .verdict');
  for (const box of boxes) {
    if (!shown(box)) continue;
    out.cells++;
    const outer = box.getBoundingClientRect();
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.textContent.trim()) continue;
      const range = document.createRange(); range.selectNodeContents(node);
      for (const r of range.getClientRects()) {
        if (r.left < outer.left - 0.5 || r.right > outer.right + 0.5 || r.top < outer.top - 0.5 || r.bottom > outer.bottom + 0.5)
          out.overflow.push({ text: node.textContent.slice(0, 60), cell: box.className, box: [outer.left, outer.right], text_box: [r.left, r.right] });
      }
    }
    if (box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX === 'visible' && box.clientWidth > 0)
      out.overflow.push({ text: box.textContent.slice(0, 60), cell: box.className, scroll: [box.scrollWidth, box.clientWidth] });
  }
  const all = document.body.querySelectorAll('*');
  for (const el of all) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !shown(el)) continue;
    const s = getComputedStyle(el); const fg = rgb(s.color); const bg = background(el);
    const size = parseFloat(s.fontSize); const bold = parseInt(s.fontWeight) >= 700;
    const need = (size >= 24 || (size >= 18.66 && bold)) ? 3 : 4.5;
    const got = ratio(fg, bg);
    out.checked++;
    if (got < need) out.contrast.push({ text: el.textContent.trim().slice(0, 40), tag: el.tagName, cls: el.className,
      ratio: Math.round(got * 100) / 100, need, fg: s.color, bg: bg.join(',') });
  }
  return JSON.stringify(out);
})()
