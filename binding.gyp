# One build description for everything native (no cmake-js):
#  - sockmesh: the BPF addon (native/*.cc but netio.cc and fdpass.cc) linked to the system libbpf,
#  - sockmesh_netio: the L7 proxy's epoll socket loop (native/netio.cc) and fd passing for the planned restart
#    (native/fdpass.cc), its own addon without libbpf, so that the
#    proxy loads where libbpf does not,
#  - bpf_objects: every bpf/*.bpf.c compiled by clang into build/bpf/<name>.bpf.o.
# File lists are expanded when gyp runs (scripts/gyp.sh does a full rebuild), so new
# bpf/*.bpf.c files and headers are picked up without editing this file.
{
  'variables': {
    'bpf_sources': ['<!@(node -p "require(\'fs\').readdirSync(\'bpf\').filter(f => f.endsWith(\'.bpf.c\')).sort().map(f => \'bpf/\' + f).join(\' \')")'],
    'bpf_headers': ['<!@(node -p "[\'bpf/include\', \'bpf/lib\'].flatMap(d => { try { return require(\'fs\').readdirSync(d).filter(f => f.endsWith(\'.h\')).sort().map(f => d + \'/\' + f); } catch { return []; } }).join(\' \')")'],
    'host_triplet': '<!(gcc -dumpmachine)',
    'addon_warnings': ['-Wall', '-Wextra', '-Wno-unused-parameter', '-Wno-missing-field-initializers'],
  },
  'targets': [
    {
      'target_name': 'sockmesh',
      'dependencies': ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      'sources': [
        'native/abi.cc',
        'native/addon.cc',
        'native/diag.cc',
        'native/errors.cc',
        'native/links.cc',
        'native/maps.cc',
        'native/object.cc',
        'native/probe.cc',
        'native/ringbuf.cc',
        'native/sockets.cc',
      ],
      'include_dirs': ['bpf/include', '<(SHARED_INTERMEDIATE_DIR)'],
      'cflags': ['<!@(pkg-config --cflags libbpf)', '<@(addon_warnings)'],
      'cflags_cc': ['-std=c++17'],
      'cflags_cc!': ['-std=gnu++17', '-std=gnu++20'],
      'libraries': ['<!@(pkg-config --libs libbpf)', '-lelf', '-lz'],
      'actions': [
        {
          # The list of structs, fields and constants is read from the ABI header at build time;
          # the compiler computes every size, offset and value (see native/abi.cc).
          'action_name': 'abi_tables',
          'inputs': ['native/gen-abi.mjs', 'bpf/include/sockmesh_abi.h'],
          'outputs': ['<(SHARED_INTERMEDIATE_DIR)/sockmesh_abi_tables.inc'],
          'action': ['node', 'native/gen-abi.mjs', 'bpf/include/sockmesh_abi.h', '<@(_outputs)'],
        },
      ],
    },
    {
      'target_name': 'sockmesh_netio',
      'dependencies': ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      'sources': ['native/errors.cc', 'native/fdpass.cc', 'native/netio.cc'],
      'cflags': ['<@(addon_warnings)'],
      'cflags_cc': ['-std=c++17'],
      'cflags_cc!': ['-std=gnu++17', '-std=gnu++20'],
    },
    {
      'target_name': 'bpf_objects',
      'type': 'none',
      'sources': ['<@(bpf_sources)'],
      'rules': [
        {
          'rule_name': 'clang_bpf',
          'extension': 'c',
          # Every object depends on every shared header: a change to the ABI rebuilds all of them.
          'inputs': ['<@(bpf_headers)'],
          'outputs': ['<(module_root_dir)/build/bpf/<(RULE_INPUT_ROOT).o'],
          'action': [
            'clang', '-O2', '-g', '-target', 'bpf', '-D__TARGET_ARCH_x86',
            '-I', '<(module_root_dir)/bpf/include', '-I', '<(module_root_dir)/bpf/lib',
            '-I', '/usr/include/<(host_triplet)', '-Wall', '-Werror',
            '-c', '<(RULE_INPUT_PATH)', '-o', '<@(_outputs)',
          ],
          'message': 'BPF <(RULE_INPUT_NAME)',
          'process_outputs_as_sources': 0,
        },
      ],
    },
  ],
}
