// nginx as a bench's HTTP server: one worker, no master, no access log, every temp path in the bench's own directory,
// answering 200 with a fixed body on every address:port it is given.

export function nginxConfig(dir: string, listens: Array<[string, number]>, body: string): string {
  return [
    'daemon off;', 'master_process off;', 'worker_processes 1;', `pid ${dir}/nginx.pid;`, 'error_log stderr warn;',
    'events { worker_connections 4096; }',
    'http {',
    '  access_log off;',
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${dir}/${t};`),
    `  server { ${listens.map(([a, p]) => `listen ${a}:${p}; `).join('')}location / { return 200 "${body}\\n"; } }`,
    '}', '',
  ].join('\n');
}

export function nginxArgv(dir: string, configFile: string): string[] {
  return ['nginx', '-e', 'stderr', '-p', dir, '-c', configFile];
}
