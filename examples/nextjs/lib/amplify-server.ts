// Amplify's server-side auth for Next.js (@aws-amplify/adapter-nextjs):
// `createServerRunner` gives `runWithAmplifyServerContext` (server components
// and server actions read the session from the request's cookies) and
// `createAuthRouteHandlers` (app/api/auth/[slug]/route.ts: sign-in through
// Cognito managed login, the callback that stores the tokens in HTTP-only
// cookies, sign-out).
//
// Created on first use rather than at import: the adapter reads
// AMPLIFY_APP_ORIGIN and the config when it is created, and `next build`
// imports route modules without any of the runtime environment.
import { createServerRunner } from '@aws-amplify/adapter-nextjs';
import type { ResourcesConfig } from 'aws-amplify';
import { appConfig } from './config';

type Runner = ReturnType<typeof createServerRunner>;

let runner: Runner | undefined;

export function amplifyServer(): Runner {
  if (runner) return runner;
  const c = appConfig();
  const config: ResourcesConfig = {
    Auth: {
      Cognito: {
        userPoolId: c.userPoolId,
        userPoolClientId: c.userPoolClientId,
        loginWith: {
          oauth: {
            domain: c.cognitoDomain,
            scopes: ['openid', 'email', 'profile', 'aws.cognito.signin.user.admin'],
            redirectSignIn: [`${c.appOrigin}/api/auth/sign-in-callback`],
            redirectSignOut: [`${c.appOrigin}/api/auth/sign-out-callback`],
            responseType: 'code',
          },
        },
      },
    },
  };
  // No `runtimeOptions.cookies`: with AMPLIFY_APP_ORIGIN set the adapter
  // enables server-side auth and enforces HttpOnly (Secure on https origins,
  // SameSite=Strict by default).
  runner = createServerRunner({ config });
  return runner;
}
