// One build serves every environment: nothing here depends on where the app
// runs. Configuration is read from environment variables at request time
// (lib/config.ts), never inlined at build time.

/** @type {import('next').NextConfig} */
const nextConfig = {
  poweredByHeader: false,
  reactStrictMode: true,
};

export default nextConfig;
