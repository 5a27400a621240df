// The adapter's auth routes: /api/auth/sign-in (to Cognito managed login),
// /api/auth/sign-in-callback (code → tokens → HTTP-only cookies),
// /api/auth/sign-out (to Cognito /logout), /api/auth/sign-out-callback
// (revokes the refresh token, clears the cookies), /api/auth/sign-up.
import type { NextRequest } from 'next/server';
import { amplifyServer } from '@/lib/amplify-server';

export const dynamic = 'force-dynamic';

let handler: ReturnType<ReturnType<typeof amplifyServer>['createAuthRouteHandlers']> | undefined;

export async function GET(request: NextRequest, context: { params: Promise<{ slug: string }> }) {
  handler ??= amplifyServer().createAuthRouteHandlers({
    redirectOnSignInComplete: '/',
    redirectOnSignOutComplete: '/',
  });
  return handler(request, context);
}
