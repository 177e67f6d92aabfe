/*
 * Scoreboard front-end behaviour: local times, charts, sparklines, the
 * sortable/filterable overview table and the range form.
 *
 * No build step and no inline scripts (CSP script-src 'self'). Data arrives
 * only through Django json_script elements. Chart.js 4 (global `Chart`) and
 * chartjs-adapter-date-fns are loaded before this file.
 */
(function () {
  'use strict';

  const state = {
    charts: { trend: null, tenant: null },
    sparklines: []
  };
  window.scoreboard = state;

  // Colour-blind-friendly palette (Okabe-Ito without yellow/black, then
  // Paul Tol's muted/bright colours). After one full cycle lines are dashed.
  const PALETTE = [
    '#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9',
    '#332288', '#882255', '#999933', '#44AA99', '#AA4499', '#117733', '#661100'
  ];
  const DASHES = [[], [6, 3], [2, 3], [10, 3, 2, 3]];

  const BAND_FILL = 'rgba(100, 116, 139, 0.20)';
  const BAND_BORDER = 'rgba(100, 116, 139, 0.45)';
  const MEDIAN_COLOUR = '#334155';
  const SPARK_COLOUR = '#5b7a99';
  const SPARK_DOWN_COLOUR = '#c2410c';
  const TEXT_COLOUR = '#1f2933';
  const GRID_COLOUR = 'rgba(15, 23, 42, 0.08)';
  const FONT_STACK = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';

  const HOUR = 3600 * 1000;
  const DAY = 24 * HOUR;
  const MIN_GAP = { raw: 6 * HOUR, day: 1.5 * DAY, week: 10 * DAY };
  const TOOLTIP_FORMAT = {
    raw: 'yyyy-MM-dd HH:mm',
    day: 'yyyy-MM-dd',
    week: "'Week of' yyyy-MM-dd"
  };

  const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

  // ---------------------------------------------------------------- helpers

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function formatLocal(date, dateOnly) {
    const s = date.getFullYear() + '-' + pad(date.getMonth() + 1) + '-' + pad(date.getDate());
    if (dateOnly) {
      return s;
    }
    return s + ' ' + pad(date.getHours()) + ':' + pad(date.getMinutes());
  }

  function formatUtc(date) {
    return date.getUTCFullYear() + '-' + pad(date.getUTCMonth() + 1) + '-' +
      pad(date.getUTCDate()) + ' ' + pad(date.getUTCHours()) + ':' +
      pad(date.getUTCMinutes()) + ':' + pad(date.getUTCSeconds()) + ' UTC';
  }

  function formatScore(value) {
    return typeof value === 'number' && isFinite(value) ? numberFormat.format(value) : '';
  }

  function readJson(id) {
    const el = document.getElementById(id);
    if (!el) {
      return null;
    }
    return JSON.parse(el.textContent);
  }

  function toTime(iso) {
    if (iso === null || iso === undefined || iso === '') {
      return null;
    }
    const t = Date.parse(iso);
    return isFinite(t) ? t : null;
  }

  function toNumber(v) {
    return typeof v === 'number' && isFinite(v) ? v : null;
  }

  /**
   * Turn [[ISO, v0, v1, ...], ...] into one array of {x, y} per value column,
   * sorted by time. Rows with a bad timestamp are dropped; a missing value
   * is dropped from that column only.
   */
  function toSeries(points, columns) {
    const rows = [];
    (Array.isArray(points) ? points : []).forEach(function (p) {
      if (!Array.isArray(p)) {
        return;
      }
      const x = toTime(p[0]);
      if (x !== null) {
        rows.push({ x: x, p: p });
      }
    });
    rows.sort(function (a, b) { return a.x - b.x; });
    const out = [];
    for (let c = 0; c < columns; c++) {
      out.push([]);
    }
    rows.forEach(function (r) {
      for (let i = 0; i < columns; i++) {
        const y = toNumber(r.p[i + 1]);
        if (y !== null) {
          out[i].push({ x: r.x, y: y });
        }
      }
    });
    return out;
  }

  /**
   * The largest x distance that is still drawn as a continuous line. Longer
   * stretches without data show as gaps (Chart.js numeric `spanGaps`).
   */
  function gapThreshold(data, bucket) {
    const floor = MIN_GAP[bucket] || MIN_GAP.raw;
    if (data.length < 3) {
      return floor;
    }
    const steps = [];
    for (let i = 1; i < data.length; i++) {
      steps.push(data[i].x - data[i - 1].x);
    }
    steps.sort(function (a, b) { return a - b; });
    const median = steps[Math.floor(steps.length / 2)];
    return Math.max(floor, median * 3);
  }

  /** Point markers only while they stay readable (count: this line; total: the chart). */
  function pointRadiusFor(count, total) {
    if (count > 60 || (total || count) > 400) {
      return 0;
    }
    if (count > 20) {
      return 1.5;
    }
    return 2.5;
  }

  function lineDataset(label, data, colourIndex, bucket, total) {
    const colour = PALETTE[colourIndex % PALETTE.length];
    const dash = DASHES[Math.floor(colourIndex / PALETTE.length) % DASHES.length];
    const radius = pointRadiusFor(data.length, total);
    return {
      label: label,
      data: data,
      borderColor: colour,
      backgroundColor: colour,
      borderWidth: 2,
      borderDash: dash,
      pointRadius: radius,
      pointHoverRadius: 4,
      pointHitRadius: 6,
      fill: false,
      tension: 0,
      spanGaps: gapThreshold(data, bucket)
    };
  }

  function showEmpty(canvas, emptyId) {
    canvas.hidden = true;
    const box = canvas.closest('.chart-box');
    if (box) {
      box.classList.add('is-empty');
    }
    const empty = document.getElementById(emptyId);
    if (empty) {
      empty.removeAttribute('hidden');
    }
  }

  function timeAxes(start, end, bucket) {
    const x = {
      type: 'time',
      time: {
        tooltipFormat: TOOLTIP_FORMAT[bucket] || TOOLTIP_FORMAT.raw,
        displayFormats: {
          minute: 'HH:mm',
          hour: 'HH:mm',
          day: 'MMM d',
          week: 'MMM d',
          month: 'MMM yyyy',
          quarter: 'MMM yyyy',
          year: 'yyyy'
        }
      },
      ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12 },
      grid: { color: GRID_COLOUR }
    };
    const min = toTime(start);
    const max = toTime(end);
    if (min !== null) {
      x.min = min;
    }
    if (max !== null && (min === null || max > min)) {
      x.max = max;
    }
    // Hour ticks alone ("09:00") lose the date: over a few days tick by day,
    // and on shorter ranges put the date into the hour label.
    if (min !== null && max !== null && max - min > 3 * DAY) {
      x.time.minUnit = 'day';
    } else {
      x.time.displayFormats.hour = 'MMM d HH:mm';
    }
    return {
      x: x,
      y: {
        type: 'linear',
        beginAtZero: false,
        grace: '5%',
        title: { display: true, text: 'Secure score' },
        ticks: { callback: function (value) { return formatScore(value); } },
        grid: { color: GRID_COLOUR }
      }
    };
  }

  /**
   * Keep the plot area usable when a long legend eats the fixed-height box:
   * grow the box (never shrink it) until the plot has at least minPlot px.
   */
  function keepPlotHeight(chart, minPlot) {
    const box = chart.canvas.parentElement;
    const area = chart.chartArea;
    if (!box || !area) {
      return;
    }
    const plot = area.bottom - area.top;
    if (plot < minPlot - 1) {
      box.style.height = Math.ceil(box.clientHeight + (minPlot - plot)) + 'px';
    }
  }

  function baseOptions(canvas, extra) {
    const narrow = (canvas.parentElement ? canvas.parentElement.clientWidth : 800) < 560;
    const options = {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      parsing: false,
      normalized: true,
      interaction: { mode: 'nearest', axis: 'xy', intersect: false },
      plugins: {
        legend: {
          position: 'bottom',
          labels: {
            boxWidth: narrow ? 10 : 14,
            boxHeight: 3,
            padding: narrow ? 8 : 12,
            font: { size: narrow ? 11 : 12 }
          }
        },
        tooltip: {
          callbacks: {}
        },
        filler: { drawTime: 'beforeDatasetsDraw', propagate: false }
      }
    };
    return Object.assign(options, extra || {});
  }

  function configureDefaults() {
    Chart.defaults.animation = false;
    Chart.defaults.font.family = FONT_STACK;
    Chart.defaults.font.size = 12;
    Chart.defaults.color = TEXT_COLOUR;
    Chart.defaults.borderColor = GRID_COLOUR;
  }

  // ------------------------------------------------------------ local times

  function initLocalTimes() {
    document.querySelectorAll('time.local-time[datetime]').forEach(function (el) {
      const t = toTime(el.getAttribute('datetime'));
      if (t === null) {
        return;
      }
      const d = new Date(t);
      el.textContent = formatLocal(d, el.getAttribute('data-format') === 'date');
      el.title = formatUtc(d);
    });

    let zone = '';
    try {
      zone = Intl.DateTimeFormat().resolvedOptions().timeZone || '';
    } catch (e) {
      zone = '';
    }
    document.querySelectorAll('span.tz-name').forEach(function (el) {
      el.textContent = zone || 'local time';
    });
  }

  // ------------------------------------------------------------ trend chart

  function initTrendChart() {
    const canvas = document.getElementById('trend-chart');
    if (!canvas) {
      return;
    }
    const data = readJson('trend-data');
    if (!data) {
      showEmpty(canvas, 'trend-empty');
      return;
    }
    const bucket = data.bucket || 'raw';
    const tenants = Array.isArray(data.tenants) ? data.tenants : [];
    const datasets = [];
    const tooltipNames = [];
    const legendHidden = new Set();
    let bandPair = null;

    if (data.mode === 'fleet' && data.fleet && Array.isArray(data.fleet.points)) {
      const cols = toSeries(data.fleet.points, 3);
      const p10 = cols[0];
      const median = cols[1];
      const p90 = cols[2];
      if (p10.length || median.length || p90.length) {
        const gap = gapThreshold(median.length ? median : p10, bucket);
        const bandRadius = 0;
        datasets.push({
          label: 'Fleet 10th percentile',
          data: p10,
          borderColor: BAND_BORDER,
          backgroundColor: BAND_FILL,
          borderWidth: 1,
          pointRadius: bandRadius,
          pointHoverRadius: 3,
          pointHitRadius: 4,
          fill: false,
          tension: 0,
          spanGaps: gap
        });
        tooltipNames.push('Fleet 10th percentile');
        legendHidden.add(0);
        datasets.push({
          label: 'Fleet 10th\u201390th percentile',
          data: p90,
          borderColor: BAND_BORDER,
          backgroundColor: BAND_FILL,
          borderWidth: 1,
          pointRadius: bandRadius,
          pointHoverRadius: 3,
          pointHitRadius: 4,
          fill: 0,
          tension: 0,
          spanGaps: gap
        });
        tooltipNames.push('Fleet 90th percentile');
        bandPair = [0, 1];
        const count = toNumber(data.fleet.count);
        const medianLabel = count === null
          ? 'Fleet median'
          : 'Fleet median (' + count + (count === 1 ? ' tenant)' : ' tenants)');
        datasets.push({
          label: medianLabel,
          data: median,
          borderColor: MEDIAN_COLOUR,
          backgroundColor: MEDIAN_COLOUR,
          borderWidth: 2.5,
          borderDash: [6, 4],
          pointRadius: 0,
          pointHoverRadius: 4,
          pointHitRadius: 6,
          fill: false,
          tension: 0,
          spanGaps: gap
        });
        tooltipNames.push('Fleet median');
      }
    }

    const tenantSeries = tenants.map(function (t) {
      return {
        name: t && typeof t.name === 'string' ? t.name : String((t && t.slug) || ''),
        data: toSeries(t && t.points, 1)[0]
      };
    });
    const total = tenantSeries.reduce(function (sum, t) { return sum + t.data.length; }, 0);
    tenantSeries.forEach(function (t, index) {
      datasets.push(lineDataset(t.name, t.data, index, bucket, total));
      tooltipNames.push(t.name);
    });

    const hasPoints = datasets.some(function (ds) { return ds.data.length > 0; });
    if (!hasPoints) {
      showEmpty(canvas, 'trend-empty');
      return;
    }

    const options = baseOptions(canvas, { scales: timeAxes(data.start, data.end, bucket) });
    options.plugins.legend.labels.filter = function (item) {
      return !legendHidden.has(item.datasetIndex);
    };
    options.plugins.legend.onClick = function (event, item, legend) {
      const chart = legend.chart;
      if (bandPair && bandPair.indexOf(item.datasetIndex) !== -1) {
        const visible = !chart.isDatasetVisible(bandPair[1]);
        bandPair.forEach(function (i) { chart.setDatasetVisibility(i, visible); });
        chart.update();
        return;
      }
      Chart.defaults.plugins.legend.onClick.call(this, event, item, legend);
    };
    options.plugins.tooltip.callbacks.label = function (ctx) {
      const name = tooltipNames[ctx.datasetIndex] || ctx.dataset.label || '';
      return name + ': ' + formatScore(ctx.parsed.y);
    };
    options.onResize = function (chart) {
      window.requestAnimationFrame(function () { keepPlotHeight(chart, 180); });
    };

    const chart = new Chart(canvas, { type: 'line', data: { datasets: datasets }, options: options });
    state.charts.trend = chart;
    keepPlotHeight(chart, 180);
  }

  // ----------------------------------------------------------- tenant chart

  function initTenantChart() {
    const canvas = document.getElementById('tenant-chart');
    if (!canvas) {
      return;
    }
    const data = readJson('tenant-chart-data');
    if (!data) {
      showEmpty(canvas, 'tenant-chart-empty');
      return;
    }
    const bucket = data.bucket || 'raw';
    const name = typeof data.name === 'string' ? data.name : '';
    let datasets;
    let tooltipNames;
    const options = baseOptions(canvas, { scales: timeAxes(data.start, data.end, bucket) });

    if (bucket === 'raw') {
      const series = toSeries(data.points, 1)[0];
      if (!series.length) {
        showEmpty(canvas, 'tenant-chart-empty');
        return;
      }
      const ds = lineDataset(name || 'Secure score', series, 0, bucket);
      // Small points while they can be told apart; beyond that the line alone
      // (the hovered point is still highlighted).
      ds.pointRadius = series.length > 300 ? 0 : (series.length > 100 ? 1.5 : 2.5);
      ds.pointHoverRadius = 4;
      datasets = [ds];
      tooltipNames = [name || 'Secure score'];
      options.plugins.legend.display = false;
    } else {
      const cols = toSeries(data.points, 3);
      const mins = cols[0];
      const means = cols[1];
      const maxs = cols[2];
      if (!mins.length && !means.length && !maxs.length) {
        showEmpty(canvas, 'tenant-chart-empty');
        return;
      }
      const word = bucket === 'week' ? 'Weekly' : 'Daily';
      const gap = gapThreshold(means.length ? means : mins, bucket);
      const colour = PALETTE[0];
      const meanRadius = pointRadiusFor(means.length);
      // Index 0 is drawn on top; the band (1, 2) is filled max -> min.
      datasets = [
        {
          label: word + ' mean',
          data: means,
          borderColor: colour,
          backgroundColor: colour,
          borderWidth: 2,
          pointRadius: meanRadius,
          pointHoverRadius: 4,
          pointHitRadius: 6,
          fill: false,
          tension: 0,
          spanGaps: gap
        },
        {
          label: word + ' minimum',
          data: mins,
          borderColor: 'rgba(0, 114, 178, 0.35)',
          backgroundColor: 'rgba(0, 114, 178, 0.14)',
          borderWidth: 1,
          pointRadius: 0,
          pointHoverRadius: 3,
          pointHitRadius: 4,
          fill: false,
          tension: 0,
          spanGaps: gap
        },
        {
          label: word + ' min\u2013max',
          data: maxs,
          borderColor: 'rgba(0, 114, 178, 0.35)',
          backgroundColor: 'rgba(0, 114, 178, 0.14)',
          borderWidth: 1,
          pointRadius: 0,
          pointHoverRadius: 3,
          pointHitRadius: 4,
          fill: 1,
          tension: 0,
          spanGaps: gap
        }
      ];
      tooltipNames = [word + ' mean', word + ' minimum', word + ' maximum'];
      const rank = [1, 2, 0];
      options.interaction = { mode: 'index', intersect: false };
      options.plugins.tooltip.itemSort = function (a, b) {
        return rank[a.datasetIndex] - rank[b.datasetIndex];
      };
      options.plugins.legend.labels.filter = function (item) {
        return item.datasetIndex !== 1;
      };
      options.plugins.legend.onClick = function (event, item, legend) {
        const chart = legend.chart;
        if (item.datasetIndex === 1 || item.datasetIndex === 2) {
          const visible = !chart.isDatasetVisible(2);
          chart.setDatasetVisibility(1, visible);
          chart.setDatasetVisibility(2, visible);
          chart.update();
          return;
        }
        Chart.defaults.plugins.legend.onClick.call(this, event, item, legend);
      };
    }

    options.plugins.tooltip.callbacks.label = function (ctx) {
      const label = tooltipNames[ctx.datasetIndex] || ctx.dataset.label || '';
      return label + ': ' + formatScore(ctx.parsed.y);
    };

    state.charts.tenant = new Chart(canvas, {
      type: 'line',
      data: { datasets: datasets },
      options: options
    });
  }

  // ------------------------------------------------------------- sparklines

  // [day, hundredths, day, hundredths, ...] in any order: a day is its index in the
  // 30 days, its mean in hundredths of a point; days without a reading are left out.
  function createSparkline(canvas, pairs, days) {
    const data = [];
    const list = Array.isArray(pairs) ? pairs : [];
    for (let i = 0; i + 1 < list.length; i += 2) {
      const x = toNumber(list[i]);
      const y = toNumber(list[i + 1]);
      if (x !== null && y !== null) {
        data.push({ x: x, y: y / 100 });
      }
    }
    data.sort(function (a, b) { return a.x - b.x; });
    if (!data.length) {
      return null;
    }
    const first = data[0].y;
    const last = data[data.length - 1].y;
    const colour = last < first ? SPARK_DOWN_COLOUR : SPARK_COLOUR;
    const lastIndex = data.length - 1;
    return new Chart(canvas, {
      type: 'line',
      data: {
        datasets: [{
          data: data,
          borderColor: colour,
          backgroundColor: colour,
          borderWidth: 1.5,
          pointRadius: function (ctx) { return ctx.dataIndex === lastIndex ? 2 : 0; },
          pointBorderWidth: 0,
          fill: false,
          tension: 0,
          spanGaps: true
        }]
      },
      options: {
        responsive: false,
        maintainAspectRatio: false,
        animation: false,
        events: [],
        parsing: false,
        normalized: true,
        layout: { padding: 3 },
        plugins: {
          legend: { display: false },
          tooltip: { enabled: false },
          title: { display: false }
        },
        scales: {
          // The whole 30 days, so a tenant added last week draws at the right end.
          x: { type: 'linear', display: false, min: 0, max: Math.max(1, (days || 30) - 1) },
          y: { type: 'linear', display: false }
        }
      }
    });
  }

  function initSparklines() {
    const canvases = Array.prototype.slice.call(document.querySelectorAll('canvas.sparkline[data-slug]'));
    if (!canvases.length) {
      return;
    }
    const payload = readJson('sparkline-data');
    const data = payload && typeof payload.values === 'object' ? payload.values : null;
    if (!data) {
      return;
    }
    const draw = function (canvas) {
      try {
        const slug = canvas.getAttribute('data-slug');
        const values = Object.prototype.hasOwnProperty.call(data, slug) ? data[slug] : null;
        const chart = createSparkline(canvas, values, payload.days);
        if (chart) {
          state.sparklines.push(chart);
        }
      } catch (err) {
        console.error('scoreboard: sparkline failed', err);
      }
    };

    if (!('IntersectionObserver' in window)) {
      canvases.forEach(draw);
      return;
    }
    const observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) {
          observer.unobserve(entry.target);
          draw(entry.target);
        }
      });
    }, { rootMargin: '200px 0px' });
    canvases.forEach(function (canvas) { observer.observe(canvas); });
  }

  // ------------------------------------------------------------------ table

  function initTable() {
    const table = document.getElementById('overview-table');
    if (!table || !table.tBodies.length) {
      return;
    }
    const tbody = table.tBodies[0];
    const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

    function sortKey(row, index, type) {
      const cell = row.cells[index];
      if (!cell) {
        return null;
      }
      let raw = cell.hasAttribute('data-sort-value')
        ? cell.getAttribute('data-sort-value')
        : cell.textContent;
      raw = (raw || '').trim();
      if (raw === '') {
        return null;
      }
      if (type === 'number') {
        const n = Number(raw);
        return isFinite(n) ? n : null;
      }
      return raw;
    }

    function sortBy(th, type, ascending) {
      const index = th.cellIndex;
      const dir = ascending ? 1 : -1;
      const rows = Array.prototype.slice.call(tbody.rows).map(function (row) {
        return { row: row, key: sortKey(row, index, type) };
      });
      rows.sort(function (a, b) {
        if (a.key === null || b.key === null) {
          if (a.key === b.key) {
            return 0;
          }
          return a.key === null ? 1 : -1;
        }
        const c = type === 'number' ? a.key - b.key : collator.compare(a.key, b.key);
        return c * dir;
      });
      const frag = document.createDocumentFragment();
      rows.forEach(function (r) { frag.appendChild(r.row); });
      tbody.appendChild(frag);
    }

    table.querySelectorAll('th button.sort').forEach(function (button) {
      button.addEventListener('click', function () {
        const th = button.closest('th');
        if (!th) {
          return;
        }
        const ascending = th.getAttribute('aria-sort') !== 'ascending';
        const type = button.getAttribute('data-sort-type') === 'number' ? 'number' : 'text';
        sortBy(th, type, ascending);
        table.querySelectorAll('th[aria-sort]').forEach(function (other) {
          if (other !== th) {
            other.removeAttribute('aria-sort');
          }
        });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      });
    });
  }

  function initFilter() {
    const input = document.getElementById('tenant-filter');
    if (!input) {
      return;
    }
    const table = document.getElementById('overview-table');
    const scope = table || document;
    const counter = document.getElementById('filter-count');

    function apply() {
      const query = (input.value || '').trim().toLowerCase();
      const rows = scope.querySelectorAll('tr[data-name]');
      let shown = 0;
      rows.forEach(function (row) {
        const name = (row.getAttribute('data-name') || '').toLowerCase();
        const match = query === '' || name.indexOf(query) !== -1;
        row.hidden = !match;
        if (match) {
          shown += 1;
        }
      });
      if (counter) {
        counter.textContent = shown + ' of ' + rows.length + ' tenants';
      }
    }

    input.addEventListener('input', apply);
    input.addEventListener('search', apply);
    // Also run now: the browser may restore a typed value on back/forward.
    apply();
  }

  // ------------------------------------------------------------- range form

  function initRangeForm() {
    const form = document.getElementById('range-form');
    if (!form) {
      return;
    }
    const select = form.querySelector('select[name="range"]');
    if (!select) {
      return;
    }
    const custom = form.querySelector('.custom-dates');

    function sync() {
      if (custom) {
        custom.hidden = select.value !== 'custom';
      }
    }

    select.addEventListener('change', function () {
      sync();
      if (select.value === 'custom') {
        const start = custom && custom.querySelector('input[name="start"]');
        if (start) {
          start.focus();
        }
        return;
      }
      if (typeof form.requestSubmit === 'function') {
        form.requestSubmit();
      } else {
        form.submit();
      }
    });
    sync();
  }

  // ------------------------------------------------------------------ print

  function initPrint() {
    const resizeAll = function () {
      [state.charts.trend, state.charts.tenant].forEach(function (chart) {
        if (chart) {
          chart.resize();
        }
      });
    };
    window.addEventListener('beforeprint', resizeAll);
    window.addEventListener('afterprint', resizeAll);
  }

  // ------------------------------------------------------------------- main

  function run(label, fn) {
    try {
      fn();
    } catch (err) {
      console.error('scoreboard: ' + label + ' failed', err);
    }
  }

  function main() {
    run('local times', initLocalTimes);
    run('table sorting', initTable);
    run('table filter', initFilter);
    run('range form', initRangeForm);
    const needsCharts = document.getElementById('trend-chart') ||
      document.getElementById('tenant-chart') ||
      document.querySelector('canvas.sparkline');
    if (needsCharts) {
      run('chart defaults', configureDefaults);
      run('trend chart', initTrendChart);
      run('tenant chart', initTenantChart);
      run('sparklines', initSparklines);
      run('print', initPrint);
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', main);
  } else {
    main();
  }
}());
