#!/usr/bin/env node
// One device registration through the official Azure IoT Node SDK (DPS over HTTPS), unmodified.
//
// Usage:
//   node provision.js --host HOST --scope ID_SCOPE --registration-id ID --cert FILE --key FILE
//   node provision.js --host HOST --scope ID_SCOPE --registration-id ID --symmetric-key KEY
// Either form takes --payload JSON: the custom-allocation payload sent with the registration.
//
// The server's private CA is trusted the way any Node program trusts one without code changes:
// the caller sets NODE_EXTRA_CA_CERTS (the SDK's HTTP transport has no CA option of its own).
// The SDK always connects to port 443 of HOST.
//
// Prints exactly one JSON line on stdout:
//   {"ok": true, "registrationState": {...}}                     exit 0
//   {"ok": false, "error": {"name", "message", "statusCode"}}    exit 1
// Usage errors exit 2. The key is never printed.
'use strict';

const fs = require('fs');

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
  for (const required of ['host', 'scope', 'registration-id']) {
    if (!args[required]) {
      throw new Error('missing --' + required);
    }
  }
  const x509 = Boolean(args.cert || args.key);
  if (x509 === Boolean(args['symmetric-key']) || (x509 && !(args.cert && args.key))) {
    throw new Error('give either --cert and --key, or --symmetric-key');
  }
  if (args.payload !== undefined) {
    args.payload = JSON.parse(args.payload);
  }
  return args;
}

function securityClient(args) {
  if (args['symmetric-key']) {
    const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
    return new SymmetricKeySecurityClient(args['registration-id'], args['symmetric-key']);
  }
  const { X509Security } = require('azure-iot-security-x509');
  return new X509Security(args['registration-id'], {
    cert: fs.readFileSync(args.cert, 'utf8'),
    key: fs.readFileSync(args.key, 'utf8'),
  });
}

function describe(err) {
  // The SDK's errors carry the HTTP response as `transportObject` (or `response` for
  // errors raised below the provisioning layer); keep only what a test may assert on.
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

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(String(err.message) + '\n');
    process.exit(2);
  }
  const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
  const { Http } = require('azure-iot-provisioning-device-http');
  const client = ProvisioningDeviceClient.create(args.host, args.scope, new Http(), securityClient(args));
  if (args.payload !== undefined) {
    client.setProvisioningPayload(args.payload);
  }
  client.register((err, result) => {
    if (err) {
      emit({ ok: false, error: describe(err) }, 1);
    } else {
      emit({ ok: true, registrationState: result }, 0);
    }
  });
}

main();
