#!/usr/bin/env node
// A TPM device through the official Azure IoT Node SDK, unmodified: azure-iot-security-tpm
// (tss.js) on a software TPM, azure-iot-provisioning-device over HTTPS, then
// azure-iot-device-mqtt with the SDK's TpmAuthenticationProvider and one telemetry message.
//
// Usage:
//   node provision_tpm.js --host HOST --scope ID_SCOPE --registration-id ID --tpm-port PORT
//                         [--message TEXT] [--keys-only yes]
//
// --tpm-port is swtpm's command port on 127.0.0.1. tss.js's TpmTcpDevice in "Linux user-mode
// TRM" mode sends plain TPM_SEND_COMMAND frames, which swtpm accepts; its simulator mode opens
// with the Microsoft simulator's handshake, which swtpm does not implement (see
// docs/notes/tpm-groundwork.md). tss.js sends no TPM2_Startup, so swtpm must run with
// `--flags not-need-init,startup-clear`.
//
// --keys-only yes prints the EK and SRK the SDK reads (creating them when absent) and stops.
//
// The server's private CA is trusted through NODE_EXTRA_CA_CERTS (both transports use Node's
// TLS). Prints exactly one JSON line on stdout:
//   {"ok": true, "endorsementKey", "storageRootKey"}                         (--keys-only)
//   {"ok": true, "registrationState": {...}, "sent": true}                   exit 0
//   {"ok": false, "stage": "provision"|"hub", "error": {...}}               exit 1
// Usage errors exit 2. No key or token is printed.
'use strict';

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 1) {
    const name = argv[i];
    if (!name.startsWith('--') || i + 1 >= argv.length) {
      throw new Error('bad argument: ' + name);
    }
    args[name.slice(2)] = argv[i + 1];
    i += 1;
  }
  for (const required of ['host', 'scope', 'registration-id', 'tpm-port']) {
    if (!args[required]) {
      throw new Error('missing --' + required);
    }
  }
  args['tpm-port'] = Number(args['tpm-port']);
  if (!Number.isInteger(args['tpm-port']) || args['tpm-port'] < 1 || args['tpm-port'] > 65535) {
    throw new Error('--tpm-port must be a port number');
  }
  return args;
}

function describe(err) {
  const response = err.transportObject || err.response;
  return {
    name: err.name || err.constructor.name,
    message: String(err.message || err),
    statusCode: response && response.statusCode ? response.statusCode : null,
    code: err.code || null,
  };
}

function emit(doc, code) {
  process.stdout.write(JSON.stringify(doc) + '\n', () => process.exit(code));
}

function securityClient(args) {
  const tss = require('tss.js');
  const { TpmTcpDevice } = require('tss.js/lib/TpmDevice.js');
  const { TpmSecurityClient } = require('azure-iot-security-tpm');
  const tpm = new tss.Tpm(false);
  // The only non-default line: the TPM's address (the SDK's default is 127.0.0.1:2323).
  tpm.device = new TpmTcpDevice('127.0.0.1', args['tpm-port'], true);
  return new TpmSecurityClient(args['registration-id'], tpm);
}

function keysOnly(security) {
  security.getEndorsementKey((ekErr, ek) => {
    if (ekErr) {
      emit({ ok: false, stage: 'keys', error: describe(ekErr) }, 1);
      return;
    }
    security.getStorageRootKey((srkErr, srk) => {
      if (srkErr) {
        emit({ ok: false, stage: 'keys', error: describe(srkErr) }, 1);
        return;
      }
      emit({ ok: true, endorsementKey: ek.toString('base64'), storageRootKey: srk.toString('base64') }, 0);
    });
  });
}

function sendTelemetry(args, security, state) {
  const { Client, Message } = require('azure-iot-device');
  const { Mqtt } = require('azure-iot-device-mqtt');
  const { TpmAuthenticationProvider } = require('azure-iot-security-tpm');
  const auth = TpmAuthenticationProvider.fromTpmSecurityClient(state.deviceId, state.assignedHub, security);
  const client = Client.fromAuthenticationProvider(auth, Mqtt);
  const fail = (err) => {
    client.close(() => emit({ ok: false, stage: 'hub', registrationState: state, error: describe(err) }, 1));
  };
  client.open((openErr) => {
    if (openErr) {
      fail(openErr);
      return;
    }
    client.sendEvent(new Message(args.message || 'hello from tss.js'), (sendErr) => {
      if (sendErr) {
        fail(sendErr);
        return;
      }
      client.close(() => emit({ ok: true, registrationState: state, sent: true }, 0));
    });
  });
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(String(err.message) + '\n');
    process.exit(2);
  }
  const security = securityClient(args);
  if (args['keys-only'] === 'yes') {
    keysOnly(security);
    return;
  }
  const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
  const { Http } = require('azure-iot-provisioning-device-http');
  const client = ProvisioningDeviceClient.create(args.host, args.scope, new Http(), security);
  client.register((err, result) => {
    if (err) {
      emit({ ok: false, stage: 'provision', error: describe(err) }, 1);
      return;
    }
    // For TPM the SDK answers the whole operation result. register() has already imported
    // registrationState.tpm.authenticationKey: the TPM's ID key is now the hub key, which is
    // what the TPM authentication provider signs with. The blob itself is not printed.
    const state = Object.assign({}, result.registrationState);
    state.tpm = { authenticationKey: Boolean(state.tpm && state.tpm.authenticationKey) };
    sendTelemetry(args, security, state);
  });
}

main();
