// callsign console: copy buttons and the live charts of the rates page. The pages work without
// it; nothing here is loaded from elsewhere, and nothing is written into the page as HTML.
'use strict';

function copyButtons() {
  for (const button of document.querySelectorAll('button.copy[data-copy]')) {
    button.addEventListener('click', async () => {
      const field = document.getElementById(button.dataset.copy);
      if (!field) return;
      const original = button.textContent;
      try {
        await navigator.clipboard.writeText(field.value);
        button.textContent = 'Copied';
      } catch (_) {
        field.select();
        button.textContent = 'Selected: press Ctrl+C';
      }
      setTimeout(() => { button.textContent = original; }, 2000);
    });
  }
}

const SVG = 'http://www.w3.org/2000/svg';
const POINTS = 60; // two minutes at one reading every two seconds

// A chart: one polyline per series, scaled to the largest value shown.
function draw(svg, series, colours) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const max = Math.max(1e-9, ...series.flat());
  series.forEach((values, i) => {
    const line = document.createElementNS(SVG, 'polyline');
    const step = 300 / (POINTS - 1);
    const offset = POINTS - values.length;
    line.setAttribute('points', values.map((v, j) => `${((offset + j) * step).toFixed(1)},${(98 - (v / max) * 94).toFixed(1)}`).join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', colours[i]);
    line.setAttribute('stroke-width', '2');
    line.setAttribute('vector-effect', 'non-scaling-stroke');
    svg.appendChild(line);
  });
}

// The p99 of the requests between two readings of the cumulative histogram, in ms.
function p99(before, after) {
  const counts = after.map(([le, n], i) => [le, n - (before[i] ? before[i][1] : 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (total <= 0) return 0;
  const wanted = total * 0.99;
  for (const [le, n] of counts) {
    if (n >= wanted) return le === null ? NaN : le * 1000;
  }
  return 0;
}

function sum(routes, field) {
  return Object.values(routes).reduce((acc, r) => acc + r[field], 0);
}

function liveRates() {
  const requests = document.getElementById('chart-requests');
  if (!requests) return;
  const status = document.getElementById('rates-status');
  const table = document.querySelector('#route-rates tbody');
  const history = { requests: [], client: [], server: [], p99: [], tokens: [] };
  let previous = null;

  const push = (name, value) => {
    history[name].push(value);
    if (history[name].length > POINTS) history[name].shift();
  };

  const show = (id, text) => {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  };

  const routeRows = (reading, seconds) => {
    while (table.firstChild) table.removeChild(table.firstChild);
    for (const [route, now] of Object.entries(reading.routes)) {
      const then = previous ? (previous.routes[route] || { requests: 0, '4xx': 0, '5xx': 0 }) : now;
      const row = document.createElement('tr');
      row.dataset.route = route;
      const head = document.createElement('th');
      head.scope = 'row';
      head.textContent = route;
      row.appendChild(head);
      for (const field of ['requests', '4xx', '5xx']) {
        const cell = document.createElement('td');
        cell.textContent = ((now[field] - then[field]) / seconds).toFixed(1);
        row.appendChild(cell);
      }
      table.appendChild(row);
    }
  };

  const tick = async () => {
    let reading;
    try {
      const response = await fetch('/console/rates.json', { credentials: 'same-origin', cache: 'no-store' });
      if (response.status === 401) {
        status.textContent = 'The session has ended: sign in again to see the rates.';
        return;
      }
      if (!response.ok) throw new Error(`status ${response.status}`);
      reading = await response.json();
    } catch (e) {
      status.textContent = `The rates could not be read (${e.message}); retrying.`;
      setTimeout(tick, 2000);
      return;
    }
    if (previous) {
      const seconds = Math.max(0.001, (reading.at - previous.at) / 1000);
      const rate = (field) => (sum(reading.routes, field) - sum(previous.routes, field)) / seconds;
      push('requests', rate('requests'));
      push('client', rate('4xx'));
      push('server', rate('5xx'));
      push('p99', p99(previous.latency, reading.latency) || 0);
      push('tokens', (reading.tokens - previous.tokens) / seconds);
      draw(requests, [history.requests], ['#0b57a4']);
      draw(document.getElementById('chart-errors'), [history.client, history.server], ['#b45309', '#a4161a']);
      draw(document.getElementById('chart-p99'), [history.p99], ['#6d28d9']);
      draw(document.getElementById('chart-tokens'), [history.tokens], ['#1d6b33']);
      const last = (name) => history[name][history[name].length - 1];
      show('chart-requests-latest', `now ${last('requests').toFixed(1)}`);
      show('chart-errors-latest', `now ${last('client').toFixed(1)} / ${last('server').toFixed(1)}`);
      show('chart-p99-latest', `now ${last('p99').toFixed(2)}`);
      show('chart-tokens-latest', `now ${last('tokens').toFixed(1)}`);
      routeRows(reading, seconds);
    } else {
      routeRows(reading, 1);
    }
    previous = reading;
    setTimeout(tick, 2000);
  };
  tick();
}

document.addEventListener('DOMContentLoaded', () => {
  copyButtons();
  liveRates();
});
